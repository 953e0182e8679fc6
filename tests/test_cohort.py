"""Cohorts: several students in one program equal the single runs of the same configs."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO_ROOT
from test_train import params_of
from tiny import tiny_config

from ltkd_jax import data, methods
from ltkd_jax.config import defaults
from ltkd_jax.runs import cohort, finished
from ltkd_jax.training import networks, optim, sharding, steps, trainer
from ltkd_jax.training.writers import read_jsonl

# Float32 reduction order: the vmapped and the one-by-one forms sum the same terms in
# another order (XLA fuses a batched program differently), so parameters after a few SGD
# steps agree to a few hundred ulps of their scale, as the device and host paths do
# (tests/test_device_epochs.py).
PARAMS_TOL = dict(rtol=1e-4, atol=1e-5)
METHODS = ("ce", "kd", "bkd")


def member_config(method, teacher_dir="", seed=0, **overrides):
    values = {"method": method, "num_devices": 1, "seed": seed, "teacher.model": "resnet8"}
    if method != "ce" and teacher_dir:
        values["teacher.workdir"] = teacher_dir
    return tiny_config(**values, **overrides)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("teacher"))
    trainer.train_and_evaluate(tiny_config(num_devices=1, seed=1000), workdir)
    return workdir


@pytest.fixture(scope="module")
def teacher(teacher_dir):
    return finished.load(teacher_dir, mesh=sharding.make_mesh(1)).as_teacher()


# ---------------------------------------------------------------------------------------
# One step (the fast suite)
# ---------------------------------------------------------------------------------------


def _states_and_methods(task):
    configs = [member_config(m) for m in METHODS]
    model = networks.build_model(configs[0], 10)
    schedule = optim.make_schedule(configs[0].optim, 3, 2)
    tx = optim.make_optimizer(configs[0].optim, schedule)
    mesh = sharding.make_mesh(1)
    states = [networks.create_train_state(model, tx, (8, 8, 1), s, mesh) for s in (0, 1, 2)]
    mtask = methods.Task(task.class_counts, task.class_groups, dataset="digits")
    return states, [methods.make(c, mtask) for c in configs], schedule


@pytest.mark.parametrize("vmapped", [False, True], ids=["one_by_one", "vmapped"])
def test_a_cohort_step_is_each_members_own_step(teacher, vmapped):
    """The gradient of the sum of independent member losses is each member's own gradient:
    one cohort step equals every member's single-run step on the same batch."""
    task = data.load_task(tiny_config().data)
    states, member_methods, schedule = _states_and_methods(task)
    batch = {"image": task.train.images[:32], "label": task.train.labels[:32].astype(np.int32)}
    mean, std = data.input_stats(tiny_config().data, 1)
    ctxs = tuple(m.epoch_context(0) for m in member_methods)
    layout = steps.CohortLayout(((0, 1, 2),), None, vmapped)
    state = steps.CohortState((steps.stack_members(states),), jnp.ones(3, bool))
    new, cohort_metrics = jax.jit(
        lambda s, t, b, c: steps.cohort_step(
            s,
            t,
            b,
            c,
            layout=layout,
            member_methods=tuple(member_methods),
            schedule=schedule,
            mean=mean,
            std=std,
        )  # fmt: skip
    )(state, (teacher,), batch, ctxs)
    for k, (member, method) in enumerate(zip(states, member_methods, strict=True)):
        single, single_metrics = jax.jit(
            lambda s, t, b, c, m=method: steps.train_step(
                s, t, b, c, method=m, schedule=schedule, mean=mean, std=std
            )
        )(member, (teacher,), batch, ctxs[k])
        got = layout.member(new, k)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, **PARAMS_TOL),
            params_of(got),
            params_of(single),
        )
        np.testing.assert_allclose(cohort_metrics[k]["loss"], single_metrics["loss"], rtol=1e-5)
        assert set(cohort_metrics[k]) == set(single_metrics)


def test_a_non_finite_member_is_frozen_and_the_others_train(teacher):
    task = data.load_task(tiny_config().data)
    states, member_methods, schedule = _states_and_methods(task)
    batch = {"image": task.train.images[:32], "label": task.train.labels[:32].astype(np.int32)}
    mean, std = data.input_stats(tiny_config().data, 1)
    ctxs = [m.epoch_context(0) for m in member_methods]
    diverged = member_methods[1].loss
    member_methods[1] = dataclasses.replace(
        member_methods[1], loss=lambda *args: (diverged(*args)[0] * jnp.inf, {})
    )
    layout = steps.CohortLayout(((0, 1, 2),), None, False)
    state = steps.CohortState((steps.stack_members(states),), jnp.ones(3, bool))
    new, _ = steps.cohort_step(
        state, (teacher,), batch, tuple(ctxs), layout=layout,
        member_methods=tuple(member_methods), schedule=schedule, mean=mean, std=std,
    )  # fmt: skip
    assert np.asarray(new.alive).tolist() == [True, False, True]
    jax.tree.map(
        np.testing.assert_array_equal, params_of(layout.member(new, 1)), params_of(states[1])
    )
    moved = jax.tree.map(
        lambda a, b: bool(np.any(a != b)), params_of(layout.member(new, 0)), params_of(states[0])
    )
    assert any(jax.tree.leaves(moved))


def test_members_must_share_the_recipe():
    trainer.check_cohort([member_config("ce"), member_config("kd", "/t", seed=3)])
    with pytest.raises(ValueError, match="batch_size"):
        trainer.check_cohort([member_config("ce"), member_config("kd", "/t", batch_size=16)])
    with pytest.raises(ValueError, match="teacher.num_epochs"):
        trainer.check_cohort(
            [member_config("kd", "/t"), member_config("bkd", "/t", **{"teacher.num_epochs": 9})]
        )


def test_shared_fields_reach_every_member():
    config = defaults.cohort_config({m: member_config(m) for m in METHODS})
    config.num_epochs = 7
    config.data.archive = "/data.zip"
    assert {m.num_epochs for m in config.members.values()} == {7}
    assert {m.to_dict()["data"]["archive"] for m in config.members.values()} == {"/data.zip"}
    assert config.members.kd.method == "kd" and "loss" not in config
    described = defaults.describe_config(config)
    assert "members.kd.loss.temperature" in described and "\nnum_epochs = 7" in described


def test_the_table_gives_mean_and_std_over_seeds(tmp_path):
    members = []
    for seed, top1 in ((0, 0.5), (1, 0.7)):
        workdir = tmp_path / f"kd_s{seed}"
        workdir.mkdir()
        record = {"step": 6, "epoch": 2, "split": "test", "top1": top1, "many": 0.9,
                  "medium": 0.5, "few": None, "mean_class_acc": top1}  # fmt: skip
        (workdir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        members.append(trainer.Member(member_config("kd", seed=seed), str(workdir), workdir.name))
    (tmp_path / "kd_s1" / trainer.STOPPED_FILE).write_text(json.dumps({"step": 4}))
    table = cohort.markdown_table(cohort.table_rows(members), "t")
    assert (
        "| kd | 2/2 | 2 | 60.00 ± 14.14 | 60.00 ± 14.14 | 90.00 ± 0.00 | 50.00 ± 0.00 | n/a |"
        in table
    )
    assert "- kd: kd_s1 at step 4 stopped on a non-finite loss" in table


# ---------------------------------------------------------------------------------------
# Whole runs (slow)
# ---------------------------------------------------------------------------------------


def _records(workdir, split):
    return [
        {k: v for k, v in r.items() if k != "images_per_sec"}
        for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
        if r["split"] == split
    ]


@pytest.mark.slow
@pytest.mark.parametrize("vmapped", [False, True], ids=["one_by_one", "vmapped"])
def test_a_cohort_ends_where_its_single_runs_end(
    teacher_dir, teacher, tmp_path, monkeypatch, vmapped
):
    monkeypatch.setattr(trainer, "VMAP_ON_CPU", vmapped)
    configs = {m: member_config(m, teacher_dir) for m in METHODS}
    members = [trainer.Member(c, str(tmp_path / "cohort" / m), m) for m, c in configs.items()]
    results = trainer.train_cohort(members, teachers=(teacher,))
    for (method, config), member, result in zip(configs.items(), members, results, strict=True):
        single_dir = str(tmp_path / "single" / method)
        teachers = (teacher,) if method != "ce" else ()
        single = trainer.train_and_evaluate(config, single_dir, teachers=teachers)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, **PARAMS_TOL),
            params_of(result.state),
            params_of(single.state),
        )
        got, want = _records(member.workdir, "test"), _records(single_dir, "test")
        assert [r["step"] for r in got] == [r["step"] for r in want]
        for a, b in zip(got, want, strict=True):  # the same predictions on every test image
            assert a["top1"] == b["top1"] and a["per_class_acc"] == b["per_class_acc"], method
        with open(os.path.join(member.workdir, "config.json")) as f:
            assert json.load(f) == json.loads(json.dumps(config.to_dict()))


@pytest.mark.slow
def test_per_seed_members_see_their_own_seeds_batches(tmp_path):
    configs = [member_config("ce", seed=s, **{"data.augment": "cifar"}) for s in (0, 1)]
    members = [trainer.Member(c, str(tmp_path / f"s{c.seed}"), f"s{c.seed}") for c in configs]
    results = trainer.train_cohort(members, data_mode="per_seed")
    for config, result in zip(configs, results, strict=True):
        single = trainer.train_and_evaluate(config, str(tmp_path / f"single{config.seed}"))
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, **PARAMS_TOL),
            params_of(result.state),
            params_of(single.state),
        )


@pytest.mark.slow
def test_a_killed_cohort_resumes_bit_exact(teacher_dir, teacher, tmp_path, kill_after_first_save):
    """The kill lands after the first member's first save: the others have none yet, and
    the saved one is ahead; the resumed cohort starts them all again at the same step."""
    configs = {m: member_config(m, teacher_dir) for m in METHODS}

    def members(root):
        return [trainer.Member(c, str(tmp_path / root / m), m) for m, c in configs.items()]

    with pytest.raises(KeyboardInterrupt):
        trainer.train_cohort(members("killed"), teachers=(teacher,))
    kill_after_first_save.undo()
    resumed = trainer.train_cohort(members("killed"), teachers=(teacher,))
    reference = trainer.train_cohort(members("reference"), teachers=(teacher,))
    for a, b, member in zip(resumed, reference, members("killed"), strict=True):
        jax.tree.map(np.testing.assert_array_equal, params_of(a.state), params_of(b.state))
        steps_seen = [r["step"] for r in _records(member.workdir, "test")]
        assert steps_seen == sorted(set(steps_seen)), steps_seen  # no record twice


@pytest.mark.slow
def test_the_quick_start_cohort_command(tmp_path):
    workdir = tmp_path / "cohort"
    cmd = [
        sys.executable, "-m", "ltkd_jax.main", "--config", "configs/cohort_quickstart.py",
        f"--workdir={workdir}", "--config.num_epochs=2", "--config.teacher.num_epochs=2",
        "--config.optim.warmup_epochs=1", "--config.optim.decay_epochs=(1,2)",
        "--config.progress_bar=false",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("ce_s0", "kd_s0", "bkd_s0"):
        assert (workdir / name / "summary.json").exists() and (workdir / name / "report").is_dir()
        assert f"{name:<10} final (epoch 2)" in proc.stdout
    table = (workdir / "cohort.md").read_text()
    assert all(f"| {m} | 1/1 | 2 |" in table for m in METHODS)
    # A new member, which would start the others over, is refused before anything is written.
    proc = subprocess.run(
        [*cmd[:4], "configs/cohort_quickstart.py:methods=ce,kd,bkd,dkd", *cmd[5:]],
        cwd=REPO_ROOT, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert proc.returncode == 2 and "holds a cohort of" in proc.stderr
