"""Distillation end to end: every method trains a student from a frozen teacher."""

import functools
import json
import shutil

import jax
import numpy as np
import pytest
from test_train import assert_trees_close, float32_rtol, params_of
from tiny import tiny_config

from ltkd_jax import data, methods
from ltkd_jax.config import defaults
from ltkd_jax.models import cpu_ops
from ltkd_jax.runs import finished, job
from ltkd_jax.runs import teachers as teacher_stage
from ltkd_jax.runs.summary import summarize_run
from ltkd_jax.training import checkpointing, networks, trainer
from ltkd_jax.training.writers import read_jsonl

pytestmark = pytest.mark.slow  # end-to-end: `pytest -m "not slow"` skips it

# Config changes beyond a method's own defaults, on top of the tiny digits recipe: switches
# that happen late in the real schedules (DRW, DKD's warm-up) happen within these 2 epochs,
# and the optional parts (KRDistill's feature term, CBD's ensemble) are switched on.
METHOD_OVERRIDES = {
    "ldam_drw": {"loss.drw_epoch": 1},
    "dkd": {"loss.warmup_epochs": 1},
    "krdistill": {"loss.beta": 1.0},
    "cbd": {"data.sampler": "class_balanced"},
    "cbd_ensemble": {"teacher.count": 2},
}
# Every registered method that trains from scratch, a method added later included (cRT
# starts from a finished run: test_crt_retrains_only_the_classifier; corrections train
# nothing: test_posthoc_corrections_evaluate_a_tau_grid).
TRAINED = [
    m
    for m in methods.NAMES
    if methods.get(m).kind == methods.TRAINING
    and not methods.needs_of(defaults.base_config(m)).init_run
]


def student_config(method, teacher_dir, **overrides):
    head = methods.get(method).head
    values = {
        "method": method,
        "num_devices": 1,
        "max_steps_per_epoch": 2,
        "teacher.model": "resnet8",
        **({"model.head": head} if head else {}),
        **METHOD_OVERRIDES.get(method, {}),
        **overrides,
    }
    count = values.get("teacher.count", 1)
    if methods.num_teachers(tiny_config(**values)):
        values["teacher.workdir"] = ",".join([teacher_dir] * count)
    return tiny_config(**values)


def train_losses(workdir) -> list[float]:
    return [r["loss"] for r in read_jsonl(f"{workdir}/metrics.jsonl") if r["split"] == "train"]


# The methods that learn from a teacher.
DISTILLED = [m for m in TRAINED if methods.num_teachers(student_config(m, "teacher"))]


def noisy(teacher: networks.Teacher, seed: int) -> networks.Teacher:
    """Another teacher: every weight moved by half its tensor's spread, at random."""
    rng = np.random.default_rng(seed)

    def move(x):
        x = np.asarray(x)
        return x + 0.5 * x.std() * rng.standard_normal(x.shape).astype(x.dtype)

    return teacher.replace(variables=jax.tree.map(move, teacher.variables))


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("teacher"))
    trainer.train_and_evaluate(tiny_config(num_devices=1), workdir)
    return workdir


def prepare_teachers(config, workdir: str) -> tuple:
    """The student's frozen teachers, as `job.run` prepares them."""
    mesh = trainer.sharding.make_mesh(config.num_devices)
    return teacher_stage.prepare_teachers(config, workdir, data.load_task(config.data), mesh)[0]


@pytest.fixture(scope="module")
def student_runs(teacher_dir, tmp_path_factory):
    """Every method, 2 epochs of 2 steps, from the same frozen teacher."""
    runs = {}
    for method in TRAINED:
        workdir = str(tmp_path_factory.mktemp(method))
        config = student_config(method, teacher_dir)
        teachers = prepare_teachers(config, workdir)
        before = jax.tree.map(np.array, [t.variables for t in teachers])
        state = trainer.train_and_evaluate(config, workdir, teachers=teachers).state
        after = jax.tree.map(np.array, [t.variables for t in teachers])
        runs[method] = dict(workdir=workdir, state=state, before=before, after=after)
    return runs


@pytest.mark.parametrize("method", TRAINED)
def test_method_trains_evaluates_and_checkpoints(student_runs, method):
    run = student_runs[method]
    records = read_jsonl(f"{run['workdir']}/metrics.jsonl")
    train_records = [r for r in records if r["split"] == "train"]
    test_records = [r for r in records if r["split"] == "test"]
    assert train_records and all(np.isfinite(r["loss"]) for r in train_records)
    assert [r["epoch"] for r in test_records] == [1, 2]
    assert all(np.isfinite(r["top1"]) for r in test_records)
    assert checkpointing.make_manager(run["workdir"], read_only=True).latest_step() == 4


@pytest.mark.parametrize("method", DISTILLED)
def test_another_teacher_gives_another_student(student_runs, teacher_dir, tmp_path, method):
    """The same student, seed and batches, from a teacher with other weights."""
    config = student_config(method, teacher_dir)
    teachers = prepare_teachers(config, str(tmp_path))
    others = tuple(noisy(t, seed=k) for k, t in enumerate(teachers))
    state = trainer.train_and_evaluate(config, str(tmp_path), teachers=others).state
    ours, theirs = params_of(state), params_of(student_runs[method]["state"])
    # Rerun with the same teacher, the student is the same to ~1e-6 (the resume test).
    change = max(
        float(np.abs(a - b).max() / np.abs(b).max())
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True)
    )
    assert change > 1e-2, f"{method}: the student barely depends on its teacher ({change:.1e})"
    ours, theirs = train_losses(tmp_path), train_losses(student_runs[method]["workdir"])
    assert len(ours) == len(theirs) and not np.allclose(ours, theirs, rtol=1e-3)


def test_teachers_are_bitwise_unchanged(student_runs, teacher_dir):
    for run in student_runs.values():
        jax.tree.map(np.testing.assert_array_equal, run["before"], run["after"])
    # And the teacher on disk is what the students were given (BatchNorm folded on the CPU).
    config = student_config("kd", teacher_dir)
    restored = finished.load_teacher(
        config, teacher_dir, data.load_task(config.data), trainer.sharding.make_mesh(1)
    )
    if cpu_ops.cpu_kernels_enabled(config.model.cpu_kernels):
        restored = networks.fold_teacher(restored)
    jax.tree.map(
        np.testing.assert_array_equal,
        jax.tree.map(np.asarray, restored.variables),
        student_runs["kd"]["before"][0],
    )


def test_students_are_shaped_by_their_teachers(student_runs):
    """The method's own parts live under their own subtrees: KRDistill's regressor at
    params['side'], CBD's projection at params['neck']; other students have neither."""
    params = student_runs["krdistill"]["state"].params
    assert params["side"]["kernel"].shape == (64, 64)  # ResNet-8 feature widths
    assert not {"side", "neck"} & set(student_runs["kd"]["state"].params)
    # CBD: projection as wide as the teachers' features together (ltkd_jax/methods/cbd.py).
    assert student_runs["cbd"]["state"].params["neck"]["kernel"].shape == (64, 64)
    assert student_runs["cbd_ensemble"]["state"].params["neck"]["kernel"].shape == (64, 128)


def test_student_run_resumes_after_a_kill(
    student_runs, teacher_dir, tmp_path, kill_after_first_save
):
    config = student_config("bkd", teacher_dir)
    with pytest.raises(KeyboardInterrupt):
        job.run(config, str(tmp_path))
    kill_after_first_save.undo()
    job.run(config, str(tmp_path))
    resumed = trainer.train_and_evaluate(
        config, str(tmp_path), teachers=prepare_teachers(config, str(tmp_path))
    ).state
    reference = student_runs["bkd"]["state"]
    assert_trees_close(params_of(resumed), params_of(reference), rtol=1e-5, atol=1e-6)


def _edited_run(teacher_dir, tmp_path, edit):
    copy = tmp_path / "teacher_copy"
    shutil.copytree(teacher_dir, copy)
    for name in ("config.json", "task.json"):
        path = copy / name
        content = json.loads(path.read_text())
        edit(name, content)
        path.write_text(json.dumps(content))
    return str(copy)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda n, c: c.update(num_classes=100) if n == "task.json" else None, "100 classes"),
        (lambda n, c: c["data"].update(name="cifar10") if n == "config.json" else None, "cifar10"),
        (lambda n, c: c.update(image_shape=[32, 32, 3]) if n == "task.json" else None, "shape"),
    ],
    ids=["classes", "dataset", "input_shape"],
)
def test_mismatched_teacher_is_rejected_with_the_reason(teacher_dir, tmp_path, edit, message):
    bad = _edited_run(teacher_dir, tmp_path, edit)
    config = student_config("kd", bad)
    with pytest.raises(ValueError, match=message):
        prepare_teachers(config, str(tmp_path / "student"))


def test_wrong_teacher_architecture_and_missing_teacher(teacher_dir, tmp_path):
    with pytest.raises(ValueError, match="is a resnet8"):
        prepare_teachers(
            student_config("kd", teacher_dir, **{"teacher.model": "resnet20"}), str(tmp_path)
        )
    with pytest.raises(FileNotFoundError, match="not a ltkd_jax run"):
        prepare_teachers(student_config("kd", str(tmp_path / "nothing")), str(tmp_path))
    with pytest.raises(ValueError, match="needs 1 teacher"):
        trainer.train_and_evaluate(student_config("kd", teacher_dir), str(tmp_path))


def test_crt_retrains_only_the_classifier(teacher_dir, tmp_path):
    config = tiny_config(
        method="crt",
        num_devices=1,
        max_steps_per_epoch=2,
        **{"init.workdir": teacher_dir, "data.sampler": "class_balanced"},
    )
    with pytest.raises(ValueError, match="starts from a finished run"):
        trainer.train_and_evaluate(config, str(tmp_path))  # never silently from scratch
    mesh = trainer.sharding.make_mesh(1)
    start = finished.load_init(config, data.load_task(config.data), mesh).variables
    state = trainer.train_and_evaluate(config, str(tmp_path), init=start).state
    trained = params_of(state)
    for key in start["params"]:
        if key == "classifier":
            continue
        jax.tree.map(np.testing.assert_array_equal, trained["params"][key], start["params"][key])
    jax.tree.map(np.testing.assert_array_equal, trained["batch_stats"], start["batch_stats"])
    assert not np.allclose(
        trained["params"]["classifier"]["kernel"], start["params"]["classifier"]["kernel"]
    )


def _compare_module():
    from conftest import load_script

    return load_script("compare")


def test_compare_writes_a_table_and_a_per_class_plot(student_runs, teacher_dir, tmp_path):
    compare = _compare_module()
    rows = [("teacher", summarize_run(teacher_dir))] + [
        (m, summarize_run(student_runs[m]["workdir"])) for m in ("kd", "bkd")
    ]
    table = compare.markdown_table(rows, "Short CPU schedule.")
    body = [line for line in table.splitlines() if line.startswith("| ") and "top-1" not in line]
    assert [line.split("|")[1].strip() for line in body] == ["teacher", "kd", "bkd"]
    top1 = float(body[2].split("|")[2])
    np.testing.assert_allclose(top1, 100 * rows[2][1]["final"]["top1"], atol=0.006)
    _, task = finished.read_run_info(teacher_dir)
    path = tmp_path / "plot.png"
    compare.plot_per_class(rows, np.asarray(task["class_counts"]), str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Any recipe runs any method: the recipe's data and schedule, the method's loss settings.
    config = compare.method_config(tiny_config(), "bkd", teacher_dir)
    assert (config.method, config.data.name, config.num_epochs) == ("bkd", "digits", 2)
    assert (config.loss.class_weighting, config.teacher.workdir) == ("reweight", teacher_dir)


@pytest.mark.parametrize("method", ["tau_norm", "posthoc_la"])
def test_posthoc_corrections_evaluate_a_tau_grid(teacher_dir, tmp_path, method):
    config = tiny_config(method=method, num_devices=1, **{"init.workdir": teacher_dir})
    best = job.run(config, str(tmp_path))
    records = read_jsonl(str(tmp_path / "metrics.jsonl"))
    taus = [r["tau"] for r in records]
    np.testing.assert_allclose(taus, np.arange(21) / 10)
    assert best["top1"] == max(r["top1"] for r in records)
    # tau = 0 leaves predictions unchanged for post-hoc LA; for tau-norm it only drops the bias.
    if method == "posthoc_la":
        final = summarize_run(teacher_dir)["final"]
        np.testing.assert_allclose(records[0]["top1"], final["top1"], atol=1e-6)
    else:
        assert_is_the_bias_free_classifier(records[0], teacher_dir)


def assert_is_the_bias_free_classifier(record: dict, run_dir: str) -> None:
    """`record` (top-1, NLL) is the run's test result with logits = features @ W, no bias,
    computed here in float64 from the run's features."""
    config = tiny_config(num_devices=1)
    task = data.load_task(config.data)
    run = finished.load(run_dir, mesh=trainer.sharding.make_mesh(1))
    mean, std = data.input_stats(config.data, 1)
    images = data.normalize(task.test.images, mean, std)
    _, features = jax.jit(functools.partial(run.model.apply, train=False))(run.variables, images)
    classifier = {
        k: np.asarray(v, np.float64) for k, v in run.variables["params"]["classifier"].items()
    }
    labels = task.test.labels

    def nll_and_top1(logits):
        log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
        nll = -log_probs[np.arange(len(labels)), labels].mean()
        return nll, np.mean(logits.argmax(1) == labels)

    logits = np.asarray(features, np.float64) @ classifier["kernel"]
    nll, top1 = nll_and_top1(logits)
    with_bias, _ = nll_and_top1(logits + classifier["bias"])
    # The run's float32 features differ from these by reordering only (a ResNet-8 forward
    # pass), which moves the NLL by at most that relative error times the largest logit.
    tolerance = float32_rtol(depth=8, longest_sum=3 * 3 * 64) * np.abs(logits).max()
    assert abs(with_bias - nll) > 2 * tolerance  # the bias matters: the check can fail
    assert record["nll"] == pytest.approx(nll, abs=tolerance)
    assert record["top1"] == pytest.approx(top1, abs=1 / len(labels))  # one near-tie at most
