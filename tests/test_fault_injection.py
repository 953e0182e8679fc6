"""Kill the command line at several points, resume, and get the uninterrupted result, bit for
bit; plus two processes on one workdir, a truncated latest checkpoint and a torn metrics line.

Every run is a subprocess of tests/fault_runner.py on the tiny digits recipe (one CPU
device, a shared compile cache), so this drives the real command line and survives changes
inside the train loop.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import REPO_ROOT

from ltkd_jax.training import writers

pytestmark = pytest.mark.slow

RUNNER = str(REPO_ROOT / "tests" / "fault_runner.py")
# 4 epochs of 3 steps, evaluated and checkpointed every epoch; device-resident chunks of one
# step, so a fault can land between any two steps (whole-epoch chunks resume bit-exact too:
# tests/test_device_epochs.py).
ARGS = [
    "--config",
    "tests/tiny.py",
    "--config.num_epochs=4",
    "--config.scan_steps=1",
    "--jax_num_cpu_devices=1",
]


def _env():
    cache = os.environ.get("LTKD_JAX_CACHE", os.path.expanduser("~/.cache/ltkd_jax_xla"))
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    }


def run(workdir, point="none", n=1, extra=()):
    cmd = [sys.executable, RUNNER, point, str(n), "--", *ARGS, f"--workdir={workdir}", *extra]
    return subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=_env()
    )


def final_state(workdir) -> dict:
    path = os.path.join(workdir, "checkpoints", "12", "state")
    return ocp.PyTreeCheckpointer().restore(path)


def evaluations(workdir) -> list[dict]:
    records = writers.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    return [r for r in records if r["split"] == "test"]


def assert_same_run(workdir, reference):
    got, want = final_state(workdir), final_state(reference)
    for (path, a), (_, b) in zip(
        ocp.tree.to_flat_dict(got).items(), ocp.tree.to_flat_dict(want).items(), strict=True
    ):
        assert np.array_equal(np.asarray(a), np.asarray(b)), path  # bit for bit
    assert evaluations(workdir) == evaluations(reference)  # each evaluation once, equal


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("reference")
    out = run(workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    return workdir


def test_kills_at_several_points_resume_bit_exact(reference, tmp_path):
    faults = [
        ("save", 2, -signal.SIGKILL),  # the epoch-2 checkpoint being written
        ("eval", 1, -signal.SIGKILL),  # inside the next evaluation
        ("step", 2, -signal.SIGKILL),  # a batch drawn, its step not finished
        ("term", 2, 0),  # preemption: checkpoint at the step boundary, exit 0
        ("none", 1, 0),
    ]
    for point, n, code in faults:
        out = run(tmp_path, point, n)
        assert out.returncode == code, (point, out.stderr[-3000:])
    assert "stopped by SIGTERM: checkpoint saved" in (tmp_path / "run.log").read_text()
    assert_same_run(tmp_path, reference)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final"]["epoch"] == 4 and {"many", "medium", "few"} <= set(summary["best"])


def test_truncated_latest_checkpoint_and_torn_metrics_line(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir, ignore=shutil.ignore_patterns("run.lock"))
    # Step 12's largest array file cut in half, as a kill on a file system without atomic
    # renames leaves it; and a half-written metrics line.
    files = [p for p in (workdir / "checkpoints" / "12").rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    os.truncate(biggest, biggest.stat().st_size // 2)
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"step": 12, "split": "te')
    out = run(workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "checkpoint 12 in" in out.stderr and "cannot be restored" in out.stderr
    assert "torn last line" in out.stderr
    assert (workdir / "unrestorable_checkpoints" / "12").is_dir()  # set aside, not deleted
    assert_same_run(workdir, reference)  # resumed from step 9, bit for bit


def test_no_restorable_checkpoint_is_one_clean_error(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir, ignore=shutil.ignore_patterns("run.lock"))
    for step_dir in (workdir / "checkpoints").iterdir():
        if step_dir.name.isdigit():
            (step_dir / "_CHECKPOINT_METADATA").write_text("{")
            for meta in step_dir.rglob("_METADATA"):
                meta.write_text('{"tree_metadata": ')
    out = run(workdir)
    assert out.returncode == 2, out.stderr[-3000:]
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith("error: none of the") and "Nothing was deleted" in error
    assert "Traceback" not in out.stderr


def test_resume_with_another_config_is_refused_before_anything_is_written(reference, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir, ignore=shutil.ignore_patterns("run.lock"))
    before = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    out = run(workdir, extra=["--config.model.name=resnet20", "--config.num_epochs=6"])
    assert out.returncode == 2, out.stderr[-3000:]
    assert "config.model.name: saved 'resnet8', now 'resnet20'" in out.stderr
    assert "num_epochs" not in out.stderr.splitlines()[-1]  # a safe change is not refused
    after = {p.name: p.read_bytes() for p in workdir.iterdir() if p.is_file()}
    assert after.pop("run.lock") == b""  # held while checking, released empty
    assert after == before  # config.json, metrics, summary untouched
