"""End-to-end trainer tests on small real data (scikit-learn digits) and, when present, CIFAR."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT, SHARED_DATA
from tiny import tiny_config

from ltkd_jax import data, errors
from ltkd_jax.config import defaults
from ltkd_jax.runs.summary import summarize_run
from ltkd_jax.training import checkpointing, feeds, sharding, trainer
from ltkd_jax.training.writers import MetricWriter, read_jsonl

CIFAR100_ZIP = SHARED_DATA / "cifar100-png.zip"
TEST_SIZE = len(data.load_dataset("digits")[1])
# The grain (host) path, as record splits (ImageNet-LT, iNaturalist, large folders) train.
GRAIN = {"data.device_resident": False}
# What a GPU runs: the whole chunk in one lax.scan (feeds.SCAN_ON_CPU), Flax's own layers
# (no CPU fast path).
GPU_PATH = {"model.cpu_kernels": "off"}


def float32_rtol(depth: int, longest_sum: int) -> float:
    """Relative agreement of two float32 evaluations of the same network that differ only in
    the order of their sums (scan vs step, Flax's reductions vs GEMMs, 1 vs 8 devices).

    A float32 sum of K terms is off by at most about K * u times the sum of their magnitudes
    (u = 2**-24, first order; taken relative to the result, i.e. without heavy
    cancellation), and a step chains `depth` layers whose longest sums have `longest_sum`
    terms. A worst case: the differences measured on an Intel Xeon are ~4e-7, and the bugs
    scripts/mutants.py plants on the scan path and in Flax's layers move them by 10% or more."""
    return depth * longest_sum * np.finfo(np.float32).eps / 2


# ResNet-8 (7 convolutions and the classifier) on tiny.py's batches: its longest sums are
# the BatchNorm statistics and weight gradients over batch x 8 x 8 positions. ~1e-3.
TINY_RTOL = float32_rtol(depth=8, longest_sum=32 * 8 * 8)


def params_of(state):
    return jax.tree.map(np.asarray, {"params": state.params, "batch_stats": state.batch_stats})


def assert_trees_close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


def assert_params_agree(a, b, rtol: float):
    """Each leaf within rtol of the other's largest entry (no relative test near zero)."""
    jax.tree.map(
        lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.abs(y).max()),
        a,
        b,
    )


def train_records(workdir) -> list[dict]:
    return [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"]


def eval_records(workdir) -> list[dict]:
    return [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "test"]


@contextlib.contextmanager
def recorded_train_batches():
    """Yields a list that collects, in order, every training batch the grain path hands to
    the devices (host numpy copies; evaluation batches, which carry a mask, are left out)."""
    seen = []
    real = sharding.global_batch

    def record(mesh, local_batch):
        if "mask" not in local_batch:
            seen.append({k: np.array(v) for k, v in local_batch.items()})
        return real(mesh, local_batch)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sharding, "global_batch", record)
        yield seen


@pytest.fixture(scope="module")
def grain_run(tmp_path_factory):
    """The reference run on 1 device, its batches read by grain on the host, uninterrupted."""
    workdir = str(tmp_path_factory.mktemp("grain"))
    with recorded_train_batches() as batches:
        state = trainer.train_and_evaluate(tiny_config(num_devices=1, **GRAIN), workdir).state
    return workdir, state, batches


def test_run_writes_metrics_checkpoints_and_config(reference_run):
    workdir, state = reference_run
    assert int(state.step) == 6
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    tests = [r for r in records if r["split"] == "test"]
    assert [r["epoch"] for r in tests] == [1, 2]
    for r in tests:
        assert 0.0 <= r["top1"] <= 1.0 and np.isfinite(r["nll"])
        assert r["num_examples"] == TEST_SIZE  # every test image counted exactly once
        assert len(r["per_class_acc"]) == 10
        # Balanced test split: top-1 equals the mean per-class accuracy.
        np.testing.assert_allclose(r["top1"], np.mean(r["per_class_acc"]), atol=2e-3)
    train_records = [r for r in records if r["split"] == "train"]
    assert all(np.isfinite(r["loss"]) and r["lr"] > 0 for r in train_records)
    manager = checkpointing.make_manager(workdir, read_only=True)
    assert manager.latest_step() == 6
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["name"] == "resnet8"
    with open(os.path.join(workdir, "task.json")) as f:
        task = json.load(f)
    assert task["class_counts"] == [116, 89, 69, 53, 41, 32, 24, 19, 14, 11]  # digits-LT IF 10
    # Shot groups by these training counts (many > 50, few < 20); the balanced test split
    # (58 to 61 images per class) would put every class in "many".
    assert task["class_groups"] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_one_device_on_the_grain_path_equals_eight_devices_on_the_device_path(
    reference_run, grain_run
):
    _, state8 = reference_run
    _, state1, _ = grain_run
    # Same global batches (tests/test_device_epochs.py), global BatchNorm statistics: only
    # the order of the sums differs.
    assert_trees_close(params_of(state1), params_of(state8), rtol=1e-4, atol=1e-5)


def test_the_gpu_path_agrees_with_the_cpu_path(monkeypatch, grain_run, tmp_path):
    """The scan-form device loop and Flax's own layers, as a GPU runs them, against a CPU
    path (grain batches, one jitted step each, the CPU kernels): the same batches and
    learning rates exactly, the numbers within float32 reordering error."""
    workdir, reference, _ = grain_run
    monkeypatch.setattr(feeds, "SCAN_ON_CPU", True)
    config = tiny_config(num_devices=1, **GPU_PATH)
    state = trainer.train_and_evaluate(config, str(tmp_path)).state
    ours, theirs = train_records(tmp_path), train_records(workdir)
    assert [(r["step"], r["lr"]) for r in ours] == [(r["step"], r["lr"]) for r in theirs]
    for key in ("loss", "grad_norm", "train_top1"):
        np.testing.assert_allclose(
            [r[key] for r in ours], [r[key] for r in theirs], rtol=TINY_RTOL, err_msg=key
        )
    for mine, ref in zip(eval_records(tmp_path), eval_records(workdir), strict=True):
        assert mine["num_examples"] == ref["num_examples"] == TEST_SIZE
        np.testing.assert_allclose(mine["nll"], ref["nll"], rtol=TINY_RTOL)
        # A prediction flips only on a near-tie of two logits: allow one image.
        assert abs(mine["top1"] - ref["top1"]) <= 1 / TEST_SIZE + 1e-7
    assert_params_agree(params_of(state), params_of(reference), TINY_RTOL)


def assert_same_batches(xs: list[dict], ys: list[dict]) -> None:
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        for key in ("image", "label"):
            np.testing.assert_array_equal(x[key], y[key])


@contextlib.contextmanager
def killed_at_second_save():
    """KeyboardInterrupt where the run would save its second checkpoint (step 6 of 6): it
    has trained and logged 3 steps past its last checkpoint (step 3)."""
    real_save, saved = checkpointing.save, []

    def save(manager, step, *args, **kwargs):
        if saved:
            raise KeyboardInterrupt(f"killed before saving step {step}")
        saved.append(step)
        real_save(manager, step, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(checkpointing, "save", save)
        yield


def test_a_killed_grain_run_resumes_bit_exactly_from_its_checkpoint(grain_run, tmp_path):
    reference_dir, reference, reference_batches = grain_run
    config = tiny_config(num_devices=1, **GRAIN)
    with recorded_train_batches() as before_kill, killed_at_second_save():
        with pytest.raises(KeyboardInterrupt):
            trainer.train_and_evaluate(config, str(tmp_path))
    with recorded_train_batches() as after_resume:
        resumed = trainer.train_and_evaluate(config, str(tmp_path)).state
    assert int(resumed.step) == 6
    # All 6 batches before the kill; from the step-3 checkpoint the resumed run reads the
    # grain iterator on from batch 3: the uninterrupted run's last 3, not its first 3.
    assert len(reference_batches) == 6
    assert_same_batches(before_kill, reference_batches)
    assert_same_batches(after_resume, reference_batches[3:])
    # Same program, same inputs, the state restored bit for bit: the same result exactly.
    jax.tree.map(np.testing.assert_array_equal, params_of(resumed), params_of(reference))
    # Each record once, as in the uninterrupted run: the killed run's records after step 3
    # (steps 4 and 6, epoch 2's evaluation) are trimmed, then written again.
    records = [(r["split"], r["step"]) for r in read_jsonl(str(tmp_path / "metrics.jsonl"))]
    assert records == [
        (r["split"], r["step"]) for r in read_jsonl(f"{reference_dir}/metrics.jsonl")
    ]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(reference_run, tmp_path, kill_after_first_save):
    _, reference = reference_run
    with pytest.raises(KeyboardInterrupt):
        trainer.train_and_evaluate(tiny_config(), str(tmp_path))
    kill_after_first_save.undo()
    resumed = trainer.train_and_evaluate(tiny_config(), str(tmp_path)).state
    assert int(resumed.step) == 6
    # Same state and the same remaining batches as the uninterrupted run.
    assert_trees_close(params_of(resumed), params_of(reference), rtol=1e-5, atol=1e-6)
    steps = [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))]
    assert steps.count(6) >= 1 and steps.count(3) >= 1


def test_finished_run_is_not_retrained(reference_run):
    workdir, reference = reference_run
    again = trainer.train_and_evaluate(tiny_config(), workdir).state
    assert int(again.step) == 6
    assert_trees_close(params_of(again), params_of(reference), rtol=0, atol=0)


def test_a_lost_final_record_is_evaluated_again_and_the_summary_is_complete(
    reference_run, tmp_path
):
    """Issue 25: a finished run whose last metrics line was torn (a machine crash before
    the line reached the disk) used to lose its final test record for good, and the summary
    then reported an earlier epoch as final."""
    workdir, _ = reference_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("run.lock"))
    path = copy / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["split"] == "test" and json.loads(lines[-1])["step"] == 6
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    trainer.train_and_evaluate(tiny_config(), str(copy))
    assert read_jsonl(str(path)) == read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert summarize_run(str(copy), final_step=6)["final"]["epoch"] == 2
    path.write_text("".join(lines[:-1]))  # without the fix: the summary refuses
    with pytest.raises(ValueError, match="no test record of the final step 6"):
        summarize_run(str(copy), final_step=6)


def test_records_are_on_disk_before_the_checkpoint_that_covers_them(tmp_path, monkeypatch):
    events = []
    path = tmp_path / "metrics.jsonl"
    writer = MetricWriter(str(tmp_path), tensorboard=False)
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.fstat(fd).st_size)))
    monkeypatch.setattr(
        checkpointing, "save", lambda *args: events.append(("save", path.stat().st_size))
    )
    monkeypatch.setattr(trainer.metrics, "summarize", lambda results, groups: {"top1": 0.5})
    state = types.SimpleNamespace(params={}, batch_stats={})
    cohort = types.SimpleNamespace(
        steps_per_epoch=3,
        data=types.SimpleNamespace(class_groups=None),
        feed=types.SimpleNamespace(checkpoint_item=lambda step: None),
        layout=types.SimpleNamespace(member=lambda state, k: state),
    )
    runs = [types.SimpleNamespace(writer=writer, manager=None)]
    evaluators = [{"test": lambda variables, teachers: None}]
    trainer._evaluate_and_save(cohort, runs, state, (), 3, evaluators)
    writer.close()
    size = path.stat().st_size
    assert size > 0 and events == [("fsync", size), ("save", size)]


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    config = tiny_config(**{"optim.lr": 1e30, "optim.warmup_epochs": 0})
    with pytest.raises(FloatingPointError, match="non-finite training metrics") as error:
        trainer.train_and_evaluate(config, str(tmp_path))
    assert isinstance(error.value, errors.UserError)  # the command line: one line, exit 2
    assert "nothing is kept" in str(error.value)  # it used to claim a checkpoint was kept


@pytest.mark.slow
def test_command_line_quickstart_and_resume(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "ltkd_jax.main",
        "--config",
        "configs/quickstart.py",
        f"--workdir={tmp_path}",
        "--config.num_epochs=1",
        "--config.max_steps_per_epoch=2",
        "--config.teacher.num_epochs=1",
        "--config.progress_bar=False",
        "--jax_num_cpu_devices=2",
    ]
    first = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    # Stage 1 (the teacher) and stage 2 (the BKD student), side by side.
    *lines, note = first.stdout.strip().splitlines()[-3:]
    assert lines[0].startswith("teacher") and lines[1].startswith("bkd"), first.stdout
    assert note.startswith("groups: mean per-class accuracy")
    assert all("top-1" in line and "many" in line and "few" in line for line in lines)
    assert (tmp_path / "teacher" / "checkpoints").is_dir()
    second = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "already complete" in second.stderr


@pytest.mark.slow  # a command-line subprocess; validate_config covers it in the quick suite
def test_command_line_rejects_an_unknown_method(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "ltkd_jax.main",
        "--config=configs/quickstart.py",
        f"--workdir={tmp_path}",
        "--config.method=magic",
    ]
    out = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "config.method='magic' is not known" in out.stderr


@pytest.mark.skipif(
    not CIFAR100_ZIP.exists(), reason=f"real CIFAR-100 archive absent: {CIFAR100_ZIP}"
)
@pytest.mark.slow
def test_cifar100_lt_short_run_trains_evaluates_and_resumes(tmp_path):
    workdir = str(tmp_path / "run")
    config = defaults.base_config()
    config.data.archive = str(CIFAR100_ZIP)
    config.data.data_dir = os.environ.get(
        "LTKD_JAX_DATA_DIR", os.path.expanduser("~/.cache/ltkd_jax_data")
    )
    config.model.name = "resnet8"
    config.num_epochs, config.max_steps_per_epoch, config.batch_size = 1, 2, 64
    config.eval_batch_size = 500
    config.progress_bar = False
    state = trainer.train_and_evaluate(config, workdir).state
    assert int(state.step) == 2
    result = summarize_run(workdir)["final"]
    assert result["num_examples"] == 10_000
    assert all(np.isfinite(result[g]) for g in ("many", "medium", "few"))
    task = json.load(open(os.path.join(workdir, "task.json")))
    assert sum(task["class_counts"]) == 10_847
    assert np.bincount(task["class_groups"]).tolist() == [35, 35, 30]
    again = trainer.train_and_evaluate(config, workdir).state
    assert int(again.step) == 2


def test_a_fresh_state_depends_on_its_seed_and_only_on_it():
    """The compiled init is shared by every model of one structure; the seed still decides
    the weights (seeds of a cohort or a table are independent draws)."""
    from ltkd_jax.training import networks, optim

    config = tiny_config()
    mesh = sharding.make_mesh(1)
    tx = optim.make_optimizer(config.optim, optim.make_schedule(config.optim, 2, 4))

    def params(seed):
        model = networks.build_model(config, 10)  # a new module object each time
        state = networks.create_train_state(model, tx, (8, 8, 1), seed, mesh)
        return jax.tree.leaves(jax.tree.map(np.asarray, state.params))

    first, again, other = params(0), params(0), params(1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    kernels = [(a, b) for a, b in zip(first, other, strict=True) if a.ndim > 1]
    assert kernels and all(not np.array_equal(a, b) for a, b in kernels)
