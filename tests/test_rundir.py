"""The run directory: lock, resume-config check, metrics trimming, and the command line's
clean usage errors (one message, exit code 2, no traceback, before any data is read)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT
from tiny import tiny_config

from ltkd_jax import errors
from ltkd_jax.config import checks, defaults
from ltkd_jax.runs import finished, job, rundir
from ltkd_jax.training import writers

# ---------------------------------------------------------------------------------------
# Lock
# ---------------------------------------------------------------------------------------

HOLDER = (
    "import sys, time; from ltkd_jax.runs import rundir; rundir.acquire(sys.argv[1]); "
    "print('held', flush=True); time.sleep(60)"
)


def _start_holder(workdir):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workdir)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_process_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path, caplog):
    holder = _start_holder(tmp_path)
    try:
        with pytest.raises(rundir.WorkdirError, match=f"in use by another run \\(pid {holder.pid}"):
            rundir.acquire(str(tmp_path))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with caplog.at_level("INFO", logger="absl"):
        rundir.acquire(str(tmp_path))  # the kernel dropped the dead process's lock
    try:
        assert f"took over the stale lock of a dead run (pid {holder.pid}" in caplog.text
        rundir.acquire(str(tmp_path))  # re-entrant within one process
        rundir.release(str(tmp_path))
    finally:
        rundir.release(str(tmp_path))
    assert (tmp_path / rundir.LOCK_NAME).read_text() == ""  # a clean release leaves no holder


def test_command_line_refuses_a_workdir_in_use(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        out = _cli("--config=tests/tiny.py", f"--workdir={tmp_path}")
    finally:
        holder.kill()
        holder.wait()
    _assert_usage_error(out, f"is in use by another run (pid {holder.pid} on host")


# ---------------------------------------------------------------------------------------
# Resume config
# ---------------------------------------------------------------------------------------


def _saved_run(workdir, config):
    (workdir / "checkpoints" / "3").mkdir(parents=True)
    (workdir / "config.json").write_text(json.dumps(config.to_dict()))


def test_resume_refuses_changes_to_what_checkpoints_mean(tmp_path):
    _saved_run(tmp_path, tiny_config(method="kd"))
    before = (tmp_path / "config.json").read_text()
    changed = tiny_config(
        method="kd", **{"model.name": "resnet20", "loss.temperature": 4.0, "seed": 1}
    )
    with pytest.raises(rundir.WorkdirError) as error:
        rundir.check_resume_config(str(tmp_path), changed)
    message = str(error.value)
    assert "config.model.name: saved 'resnet8', now 'resnet20'" in message
    assert "config.loss.temperature: saved 2.0, now 4.0" in message
    assert "config.seed: saved 0, now 1" in message
    assert (tmp_path / "config.json").read_text() == before


def test_resume_accepts_and_logs_safe_changes(tmp_path, caplog):
    _saved_run(tmp_path, tiny_config())
    safe = tiny_config(num_epochs=9, eval_every_epochs=3, progress_bar=True, log_every_steps=7)
    with caplog.at_level("INFO", logger="absl"):
        rundir.check_resume_config(str(tmp_path), safe)
    assert "config.num_epochs=9 (was 2)" in caplog.text


def test_a_lower_rate_after_a_nan_resumes_only_when_named_in_resume_overrides(tmp_path):
    _saved_run(tmp_path, tiny_config())
    lower = {"optim.lr": 0.01}
    with pytest.raises(rundir.WorkdirError, match="config.optim.lr: saved 0.05, now 0.01"):
        rundir.check_resume_config(str(tmp_path), tiny_config(**lower))
    allowed = tiny_config(resume_overrides="optim.lr", **lower)
    assert rundir.check_resume_config(str(tmp_path), allowed) == {"optim.lr": (0.05, 0.01)}
    both = tiny_config(resume_overrides="optim.lr", seed=3, **lower)
    with pytest.raises(rundir.WorkdirError, match="config.seed: saved 0, now 3") as error:
        rundir.check_resume_config(str(tmp_path), both)  # the others are still refused
    assert "optim.lr" not in str(error.value)
    record = rundir.record_invocation(str(tmp_path), ["main"], overrides={"optim.lr": (0.05, 0.01)})
    assert record["resume_overrides"] == {"optim.lr": [0.05, 0.01]}
    (recorded,) = rundir.recorded_overrides(str(tmp_path))
    assert recorded["fields"] == {"optim.lr": [0.05, 0.01]}
    summary = job.with_notes({"final": {}}, str(tmp_path), [])
    assert summary["resume_overrides"] == [recorded] and "warnings" not in summary


def test_a_ce_runs_unused_distillation_fields_may_change(tmp_path):
    """A stage-1 teacher copies the student's loss fields; they do not touch its checkpoints."""
    _saved_run(tmp_path, tiny_config())
    rundir.check_resume_config(str(tmp_path), tiny_config(**{"loss.temperature": 4.0}))
    with pytest.raises(rundir.WorkdirError, match="loss.class_weighting"):
        rundir.check_resume_config(str(tmp_path), tiny_config(**{"loss.class_weighting": "drw"}))


def test_a_run_without_checkpoints_is_not_compared(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    rundir.check_resume_config(str(tmp_path), tiny_config(seed=5))


# ---------------------------------------------------------------------------------------
# Metrics file
# ---------------------------------------------------------------------------------------


def test_metrics_are_trimmed_to_the_restored_step_and_a_torn_line_is_dropped(tmp_path, caplog):
    writer = writers.MetricWriter(str(tmp_path), tensorboard=False)
    for step in (1, 2, 3, 4):
        writer.write_scalars(step, {"loss": 1.0 / step}, log=False, split="train")
    writer.close()
    path = tmp_path / "metrics.jsonl"
    with open(path, "a") as f:
        f.write('{"step": 5, "spl')  # killed mid-write
    with caplog.at_level("WARNING"):
        assert [r["step"] for r in writers.read_jsonl(str(path))] == [1, 2, 3, 4]
    assert "torn last line" in caplog.text
    writer = writers.MetricWriter(str(tmp_path), tensorboard=False)  # drops the torn tail
    writer.trim_after(2)  # resumed from the step-2 checkpoint
    writer.write_scalars(3, {"loss": 0.5}, log=False, split="train")
    writer.close()
    assert [(r["step"], r["loss"]) for r in writers.read_jsonl(str(path))] == [
        (1, 1.0),
        (2, 0.5),
        (3, 0.5),
    ]


def test_current_records_drop_a_replayed_stretch():
    """Files written before trimming existed: the records a resumed run replayed count once."""
    steps = [(1, "train"), (2, "train"), (2, "test"), (3, "train"), (2, "test"), (3, "train")]
    records = [{"step": s, "split": split, "i": i} for i, (s, split) in enumerate(steps)]
    current = [(r["step"], r["i"]) for r in writers.current_records(records)]
    assert current == [(1, 0), (2, 1), (2, 4), (3, 5)]


def test_non_finite_scalars_stay_out_of_tensorboard(tmp_path):
    pytest.importorskip("tensorboardX")
    writer = writers.MetricWriter(str(tmp_path))
    sent = []
    writer._tensorboard().add_scalar = lambda key, value, step: sent.append(key)
    writer.write_scalars(1, {"top1": 0.5, "few": float("nan")}, log=False, split="test")
    writer.close()
    assert sent == ["top1"]
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["few"] != 0  # NaN kept in JSON


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------


def _cli(*args, timeout=60):
    cmd = [sys.executable, "-m", "ltkd_jax.main", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    start = time.perf_counter()
    out = subprocess.run(
        cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )
    out.seconds = time.perf_counter() - start
    return out


def _assert_usage_error(out, expected: str):
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and len(lines) <= 3, out.stderr
    assert expected in out.stderr, out.stderr


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"method": "magic"}, "'tau_norm', 'posthoc_la']"),
        ({"model.name": "resnet9"}, "choose one of ['resnet8'"),
        ({"data.sampler": "magic"}, "'cbd_stream']"),
    ],
)
def test_config_mistakes_name_every_choice(overrides, expected):
    with pytest.raises(errors.UserError, match="invalid config") as error:
        checks.validate_config(tiny_config(**overrides))
    assert expected in str(error.value)


def test_missing_run_paths_are_reported_before_any_data():
    config = tiny_config(method="kd", **{"teacher.workdir": "/no/such/teacher,/tmp"})
    with pytest.raises(errors.UserError) as error:
        checks.check_run_paths(config)
    assert "/no/such/teacher does not exist" in str(error.value)
    assert "/tmp is not a finished ltkd_jax run (no config.json)" in str(error.value)
    with pytest.raises(errors.UserError, match="config.data.root is empty"):
        checks.check_run_paths(tiny_config(**{"data.name": "folder"}))


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"method": "kd", "teacher.num_epochs": 0}, "config.teacher.num_epochs=0 must be >= 1"),
        ({"optim.weight_decay": -1e-4}, "config.optim.weight_decay=-0.0001 must be >= 0"),
        ({"optim.momentum": 1.0}, "config.optim.momentum=1.0 must be in [0, 1)"),
        ({"log_every_steps": 0}, "config.log_every_steps=0 must be >= 1"),
        ({"keep_checkpoints": 0}, "config.keep_checkpoints=0 must be >= 1"),
        ({"seed": -1}, "config.seed=-1 must be >= 0"),
        ({"data.val_fraction": 1.0}, "config.data.val_fraction=1.0 must be in [0, 1)"),
        ({"data.few_threshold": 60}, "few_threshold=60 is above config.data.many_threshold=50"),
        ({"resume_overrides": "model.name"}, "a resume may override only ['optim.lr']"),
    ],
)
def test_every_number_is_validated_naming_its_own_field(overrides, expected):
    with pytest.raises(errors.UserError, match="invalid config") as error:
        checks.validate_config(tiny_config(**overrides))
    assert expected in str(error.value)


def test_a_teachers_epochs_are_not_checked_when_it_is_given():
    checks.validate_config(
        tiny_config(method="kd", **{"teacher.num_epochs": 0, "teacher.workdir": "/t"})
    )


# ---------------------------------------------------------------------------------------
# Teacher and init runs: finished and not in use
# ---------------------------------------------------------------------------------------


def _teacher_run(workdir, steps=(3,), num_epochs=2, steps_per_epoch=3):
    """A run directory as a finished-run check reads it: config, task, checkpoint names."""
    _saved_run(workdir, tiny_config(num_epochs=num_epochs))
    for step in steps:
        (workdir / "checkpoints" / str(step)).mkdir(parents=True, exist_ok=True)
    (workdir / "task.json").write_text(json.dumps({"steps_per_epoch": steps_per_epoch}))
    return workdir


def test_an_unfinished_teacher_is_refused_naming_the_step_reached_and_the_fix(tmp_path):
    teacher = _teacher_run(tmp_path / "teacher", steps=(3,))  # stopped at 3 of 2 x 3 steps
    config = tiny_config(method="kd", **{"teacher.workdir": str(teacher)})
    with pytest.raises(errors.UserError) as error:
        checks.check_run_paths(config)
    message = str(error.value)
    assert (
        f"the teacher in {teacher} is unfinished: its latest checkpoint is step 3 of 6" in message
    )
    assert "--config.teacher.allow_unfinished=true" in message
    with pytest.raises(errors.UserError, match="step 3 of 6"):  # the loading path too
        finished.check_finished(str(teacher), "the teacher", "teacher", allow=False)
    init = tiny_config(method="crt", **{"init.workdir": str(teacher), "model.head": "linear"})
    with pytest.raises(errors.UserError, match="the init run in .* is unfinished"):
        checks.check_run_paths(init)
    allowed = tiny_config(
        method="kd", **{"teacher.workdir": str(teacher), "teacher.allow_unfinished": True}
    )
    checks.check_run_paths(allowed)
    (warning,) = finished.allowed_unfinished(allowed)
    assert "step 3 of 6" in warning and "used anyway" in warning
    summary = job.with_notes({"final": {}}, str(tmp_path), [warning])
    assert summary["warnings"] == [warning]
    (teacher / "checkpoints" / "6").mkdir()  # finished now
    checks.check_run_paths(config)
    assert finished.allowed_unfinished(allowed) == []


# The lock as `rundir.acquire` takes it, without importing ltkd_jax (a quick test).
FLOCK_HOLDER = (
    "import fcntl, json, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
    "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, json.dumps({'pid': os.getpid()}).encode()); "
    "print('held', flush=True); time.sleep(60)"
)


def test_a_teacher_that_a_live_process_holds_is_refused(tmp_path):
    teacher = _teacher_run(tmp_path / "teacher", steps=(3, 6))
    holder = subprocess.Popen(
        [sys.executable, "-c", FLOCK_HOLDER, str(teacher / rundir.LOCK_NAME)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    try:
        with pytest.raises(errors.UserError) as error:
            checks.check_run_paths(tiny_config(method="kd", **{"teacher.workdir": str(teacher)}))
        assert rundir.live_holder(str(teacher))["pid"] == holder.pid  # probed, not taken
    finally:
        holder.kill()
        holder.wait()
    assert f"is in use by a running process (pid {holder.pid} on host" in str(error.value)
    assert rundir.live_holder(str(teacher)) is None  # the kernel dropped the dead one's lock
    checks.check_run_paths(tiny_config(method="kd", **{"teacher.workdir": str(teacher)}))


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--config.optim.lrr=0.1"],
            "--config.optim.lrr: the config has no field 'lrr'. Did you mean \"lr\" instead",
        ),
        (["--config.method=magic"], "'tau_norm', 'posthoc_la']"),
        (
            ["--config=tests/tiny.py:crt", "--config.init.workdir=/no/such/run"],
            "/no/such/run does not",
        ),
        # Another method with other hyper-parameters: start from its own config.
        (["--config.method=dkd"], "the method was changed after the config was built"),
        (["--config.loss.rebalance=batch"], "holds only the config's own method's"),
        # A stage-1 teacher's field, named as the user wrote it, before run.lock is written.
        (
            ["--config=tests/tiny.py:kd", "--config.teacher.num_epochs=0"],
            "config.teacher.num_epochs=0 must be >= 1",
        ),
    ],
)
@pytest.mark.slow
def test_command_line_mistakes_are_one_clean_message(tmp_path, args, expected):
    config = [] if any(a.startswith("--config=") for a in args) else ["--config=tests/tiny.py"]
    out = _cli(*config, f"--workdir={tmp_path / 'run'}", *args)
    _assert_usage_error(out, expected)
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.slow
def test_workdir_mistakes_are_one_clean_message(tmp_path):
    (tmp_path / "file").write_text("")
    _assert_usage_error(
        _cli("--config=tests/tiny.py", f"--workdir={tmp_path / 'file'}"), "is a file"
    )
    _assert_usage_error(
        _cli("--config=tests/tiny.py", "--workdir=/proc/ltkd_jax_run"), "is not writable"
    )


@pytest.mark.slow  # a command-line subprocess
def test_verbose_adds_the_traceback(tmp_path):
    out = _cli("--config=tests/tiny.py", f"--workdir={tmp_path}", "--config.seed=x", "--verbose")
    assert out.returncode == 2 and "Traceback" in out.stderr


def test_help_and_print_config_exit_0():
    out = _cli("--help")
    assert out.returncode == 0 and "--print_config" in out.stdout
    out = _cli("--config=tests/tiny.py", "--print_config")
    assert out.returncode == 0, out.stderr
    assert "optim.lr = 0.05" in out.stdout
    assert "keep_checkpoints = 2  # the latest N are kept" in out.stdout
    names = defaults.flatten(tiny_config().to_dict())
    assert all(f"\n{name} = " in "\n" + out.stdout for name in names)


def test_field_comments_cover_the_documented_fields():
    comments = defaults.field_comments()
    assert comments["optim.weight_decay"].startswith("Coupled L2")
    assert comments["data.in_memory"].startswith("Decode the whole dataset into RAM")
