"""End-to-end trainer tests on small real data (scikit-learn digits) and, when present, CIFAR."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT, SHARED_DATA
from tiny import tiny_config

from ltkd_jax import data
from ltkd_jax.config import defaults
from ltkd_jax.runs import job
from ltkd_jax.training import checkpointing, trainer
from ltkd_jax.training.writers import read_jsonl

CIFAR100_ZIP = SHARED_DATA / "cifar100-png.zip"
TEST_SIZE = len(data.load_dataset("digits")[1])


def params_of(state):
    return jax.tree.map(np.asarray, {"params": state.params, "batch_stats": state.batch_stats})


def assert_trees_close(a, b, **tol):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, **tol), a, b)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """Two epochs of three steps on all 8 simulated devices, uninterrupted."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    state = trainer.train_and_evaluate(tiny_config(), workdir)
    return workdir, state


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


def test_one_device_equals_eight_devices(reference_run, tmp_path):
    _, state8 = reference_run
    state1 = trainer.train_and_evaluate(tiny_config(num_devices=1), str(tmp_path))
    # Same global batch, global BatchNorm statistics: only reduction order differs.
    assert_trees_close(params_of(state1), params_of(state8), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(reference_run, tmp_path, kill_after_first_save):
    _, reference = reference_run
    with pytest.raises(KeyboardInterrupt):
        trainer.train_and_evaluate(tiny_config(), str(tmp_path))
    kill_after_first_save.undo()
    resumed = trainer.train_and_evaluate(tiny_config(), str(tmp_path))
    assert int(resumed.step) == 6
    # Same state and the same remaining batches as the uninterrupted run.
    assert_trees_close(params_of(resumed), params_of(reference), rtol=1e-5, atol=1e-6)
    steps = [r["step"] for r in read_jsonl(str(tmp_path / "metrics.jsonl"))]
    assert steps.count(6) >= 1 and steps.count(3) >= 1


def test_finished_run_is_not_retrained(reference_run):
    workdir, reference = reference_run
    again = trainer.train_and_evaluate(tiny_config(), workdir)
    assert int(again.step) == 6
    assert_trees_close(params_of(again), params_of(reference), rtol=0, atol=0)


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    config = tiny_config(**{"optim.lr": 1e30, "optim.warmup_epochs": 0})
    with pytest.raises(FloatingPointError, match="non-finite training metrics"):
        trainer.train_and_evaluate(config, str(tmp_path))


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
    state = trainer.train_and_evaluate(config, workdir)
    assert int(state.step) == 2
    result = job.summarize_run(workdir)["final"]
    assert result["num_examples"] == 10_000
    assert all(np.isfinite(result[g]) for g in ("many", "medium", "few"))
    task = json.load(open(os.path.join(workdir, "task.json")))
    assert sum(task["class_counts"]) == 10_847
    assert np.bincount(task["class_groups"]).tolist() == [35, 35, 30]
    again = trainer.train_and_evaluate(config, workdir)
    assert int(again.step) == 2
