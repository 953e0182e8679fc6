"""Kill the command line at several points, resume, and get the uninterrupted result, bit for
bit; plus two processes on one workdir, a truncated latest checkpoint, torn metrics lines, a
full disk, unreadable checkpoints and teachers, a non-finite loss and its recovery, and the
kill harness (scripts/kill_resume.py) on the quick-start job.

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
ARGS = ["--config.num_epochs=4", "--config.scan_steps=1", "--jax_num_cpu_devices=1"]


def _env():
    cache = os.environ.get("LTKD_JAX_CACHE", os.path.expanduser("~/.cache/ltkd_jax_xla"))
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "JAX_COMPILATION_CACHE_DIR": cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    }


def run(workdir, point="none", n=1, extra=(), config="tests/tiny.py"):
    cmd = [sys.executable, RUNNER, point, str(n), "--", f"--config={config}", *ARGS]
    cmd += [f"--workdir={workdir}", *extra]
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
    # renames leaves it; and the metrics file of a machine crash before it reached the disk:
    # everything after step 9 gone, the step-9 test record (the restored step's) torn.
    files = [p for p in (workdir / "checkpoints" / "12").rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    os.truncate(biggest, biggest.stat().st_size // 2)
    lines = (workdir / "metrics.jsonl").read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if '"step": 9, "epoch": 3, "split": "test"' in line)
    (workdir / "metrics.jsonl").write_text("".join(lines[:at]) + lines[at][:40])
    out = run(workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "checkpoint 12 in" in out.stderr and "cannot be restored" in out.stderr
    assert "torn last line" in out.stderr
    assert "no test record of step 9 (a torn or lost line): evaluating" in out.stderr
    assert (workdir / "unrestorable_checkpoints" / "12").is_dir()  # set aside, not deleted
    assert_same_run(workdir, reference)  # resumed from step 9, bit for bit


def _copy(reference, workdir):
    shutil.copytree(reference, workdir, ignore=shutil.ignore_patterns("run.lock"))
    return workdir


def _cut_array_files(workdir):
    """Every array file of every checkpoint cut to 10 bytes (a copy that stopped early)."""
    for path in (workdir / "checkpoints").rglob("*"):
        if path.is_file() and path.parent.name == "d":
            os.truncate(path, 10)


def _assert_one_clean_error(out, expected: str, warnings: int = 0):
    """Exit 2; the error and `warnings` warning lines besides the usual INFO log; no
    traceback, no orbax noise, no TensorStore spec."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-3000:]
    first = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert expected in "\n".join(lines[first:]), out.stderr[-3000:]
    assert len([line for line in lines[:first] if not line.startswith("I")]) == warnings, lines
    for noise in ("Traceback", "Exception ignored", "Event loop is closed", "bound method"):
        assert noise not in out.stderr


@pytest.mark.parametrize("damage", ["metadata", "array_files"])
def test_no_restorable_checkpoint_is_one_clean_error(reference, tmp_path, damage):
    workdir = _copy(reference, tmp_path / "run")
    steps = [d for d in (workdir / "checkpoints").iterdir() if d.name.isdigit()]
    for step_dir in steps:
        if damage == "metadata":
            (step_dir / "_CHECKPOINT_METADATA").write_text("{")
            for meta in step_dir.rglob("_METADATA"):
                meta.write_text('{"tree_metadata": ')
    if damage == "array_files":
        _cut_array_files(workdir)
    out = run(workdir)
    # One warning per checkpoint with a readable reason, then the error.
    _assert_one_clean_error(out, "Nothing was deleted", warnings=len(steps))
    assert out.stderr.strip().splitlines()[-1].startswith("error: none of the")
    assert out.stderr.count("cannot be restored (") == len(steps)
    if damage == "array_files":
        assert "cannot be restored (ValueError: OUT_OF_RANGE: Error" in out.stderr  # tensorstore's


def test_a_corrupt_or_unfinished_teacher_is_one_clean_error(reference, tmp_path):
    student = ["--config.teacher.model=resnet8"]
    corrupt = _copy(reference, tmp_path / "corrupt")
    _cut_array_files(corrupt)
    for manifest in corrupt.rglob("manifest.ocdbt"):
        manifest.write_text("garbage")
    out = run(
        tmp_path / "s1",
        config="tests/tiny.py:kd",
        extra=[*student, f"--config.teacher.workdir={corrupt}"],
    )
    _assert_one_clean_error(out, f"checkpoint 12 of the finished run in {corrupt} cannot be read")
    unfinished = _copy(reference, tmp_path / "unfinished")  # stopped after its step-9 save
    for step_dir in (unfinished / "checkpoints").iterdir():
        if step_dir.name.isdigit() and int(step_dir.name) > 9:
            shutil.rmtree(step_dir)
    out = run(
        tmp_path / "s2",
        config="tests/tiny.py:kd",
        extra=[*student, f"--config.teacher.workdir={unfinished}"],
    )
    _assert_one_clean_error(out, "its latest checkpoint is step 9 of 12")
    assert not (tmp_path / "s2").exists()  # refused before anything was written


def test_a_full_disk_stops_the_run_with_one_message_and_keeps_the_last_checkpoint(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    # Room for two checkpoints of the tiny run (~0.6 MB each), not for the third.
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(disk)])
    if mounted.returncode != 0:
        pytest.skip(
            "cannot mount a tmpfs here (needs root); tests/test_checkpoint_faults.py "
            "simulates the full disk"
        )
    try:
        out = run(disk / "run")
        kept = sorted(int(d.name) for d in (disk / "run" / "checkpoints").iterdir())
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    _assert_one_clean_error(
        out, "no space left on the device: a checkpoint needs about", warnings=1
    )
    assert "free for" in out.stderr  # the warning before training
    assert f"The last good checkpoint, step {kept[-1]}, is kept" in out.stderr
    assert kept and kept[-1] < 12  # only committed steps: the partial one was removed


def test_a_nan_stops_with_one_message_and_resumes_with_a_lower_rate(tmp_path):
    # The rate jumps to 0.05 x 1e30 after epoch 1: non-finite at step 5, step 3 saved.
    nan = ["--config.optim.decay_epochs=(1,)", "--config.optim.decay_factor=1e30"]
    out = run(tmp_path, extra=nan)
    _assert_one_clean_error(out, "non-finite training metrics at step 5")
    assert f"The checkpoint of step 3 in {tmp_path}/checkpoints is kept" in out.stderr
    lower = ["--config.optim.lr=1e-31", "--config.resume_overrides=optim.lr"]  # 0.1 after epoch 1
    out = run(tmp_path, extra=[*nan, *lower])
    assert out.returncode == 0, out.stderr[-3000:]
    assert (
        "resuming" in out.stderr and "config.optim.lr=1e-31, trained so far with 0.05" in out.stderr
    )
    invocations = [json.loads(line) for line in (tmp_path / "invocations.jsonl").open()]
    assert "resume_overrides" not in invocations[0]
    assert invocations[1]["resume_overrides"] == {"optim.lr": [0.05, 1e-31]}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final"]["step"] == 12
    assert summary["resume_overrides"][0]["fields"] == {"optim.lr": [0.05, 1e-31]}


def test_the_kill_harness_on_the_quickstart_job(tmp_path):
    """scripts/kill_resume.py: 6 kills over start-up, training, a save, the stage change and
    the reports; every kept checkpoint and raw record as in the uninterrupted run."""
    cmd = [sys.executable, "scripts/kill_resume.py", "--kills=6", f"--root={tmp_path}"]
    cmd += ["--", "--config.num_epochs=10", "--config.teacher.num_epochs=10"]
    out = subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800, env=_env()
    )
    print(out.stdout)  # the kills and their phases (pytest -s shows them)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout[out.stdout.index("\n{") :])
    assert report["identical"], out.stdout
    # The first kill hits the fresh run's start-up; the last may find the job done.
    assert report["kills"] >= 5 and report["after_first_checkpoint"] >= 4, out.stdout
    phases = report["phases"]
    assert phases.get("saving a checkpoint", 0) >= 1 and phases.get("training and evaluation")
    started = {p: n for p, n in phases.items() if not p.startswith("start-up")}
    assert sum(started.values()) >= 3, out.stdout  # only start-up kills may land in start-up


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
