"""Ownership and bookkeeping of a run directory (WORKDIR).

- `hold(workdir)`: an exclusive lock (`WORKDIR/run.lock`, `fcntl.flock`) for the life of a
  job. A second process on the same workdir stops at once, naming the holder; the kernel
  drops the lock when its holder dies (even by SIGKILL), so a stale lock file is simply taken
  over, with a log line.
- `check_resume_config(workdir, config)`: before a resumed run writes anything, its config is
  compared with the saved `config.json`. Fields that change what the checkpoints mean are
  refused, naming both values; the fields in `SAFE_TO_CHANGE` are accepted and logged.
  `check_resume_data` does the same for the data's fingerprint in `task.json`.
- `record_invocation(workdir)`: the command line, git commit and host of every start,
  appended to `WORKDIR/invocations.jsonl` (beside `config.json`).
- `log_to_file(workdir)`: every log line of the job in WORKDIR/run.log.

Preemption (SIGTERM, Ctrl-C) belongs to the training loop: `ltkd_jax.training.preemption`.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping

from absl import logging

from ltkd_jax import errors
from ltkd_jax.config import defaults

LOCK_NAME = "run.lock"
INVOCATIONS_NAME = "invocations.jsonl"

# Config fields a resumed run may change: how long to train, how often to evaluate and log,
# where the (same) data is read from, how fast. Every other field changes what the saved
# checkpoints mean (model, head, method, data, seed, batch size, imbalance factor, loss,
# optimiser, teachers) and is refused.
SAFE_TO_CHANGE = frozenset(
    {
        "num_epochs",
        "eval_every_epochs",
        "eval_batch_size",
        "log_every_steps",
        "progress_bar",
        "keep_checkpoints",
        "num_devices",
        "data.num_workers",
        "data.in_memory",
        "data.data_dir",
        "data.archive",
        "data.root",
        "data.list_dir",
        "model.cpu_kernels",
        # How batches reach the step: the same batches either way.
        "data.device_resident",
        "scan_steps",
        # Choices about this start, not about what the checkpoints hold.
        "teacher.allow_unfinished",
        "init.allow_unfinished",
        "resume_overrides",
    }
)


def unused_by(saved: Mapping, name: str) -> bool:
    """True for a field the saved run never read: a CE run (every stage-1 teacher) has no
    teacher of its own, so the teacher section means nothing to its checkpoints."""
    return saved.get("method") == "ce" and name.startswith("teacher.")


WorkdirError = errors.WorkdirError  # raised here for the workdir's own problems


# ---------------------------------------------------------------------------------------
# The workdir itself
# ---------------------------------------------------------------------------------------


def is_local(path: str) -> bool:
    """False for object-store paths (gs://...), where no lock or permission check applies."""
    return "://" not in path


def check_workdir(workdir: str) -> None:
    """Raises WorkdirError if `workdir` is a file or cannot be created or written."""
    if not is_local(workdir):
        return
    path = os.path.abspath(os.path.expanduser(workdir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise WorkdirError(f"--workdir={workdir} is a file, not a directory; pass a new or run dir")
    try:  # the real test: root passes os.access everywhere, read-only mounts fail here
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise WorkdirError(
            f"--workdir={workdir} is not writable ({e.strerror or e}); pick a directory you "
            "own or fix its permissions"
        ) from None


# ---------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------

# Locks this process holds: path -> (file descriptor, depth). Re-entrant, because a job
# holds its workdir while its stages run inside it.
_HELD: dict[str, list] = {}


def holder_text(info: Mapping) -> str:
    """'pid P on host H, started T' of a lock holder."""
    return (
        f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started "
        f"{info.get('start_time', '?')}"
    )


def _lock_path(workdir: str) -> str:
    # realpath: one workdir reached through a symlink is still one lock of this process.
    return os.path.join(os.path.realpath(os.path.expanduser(workdir)), LOCK_NAME)


def _read_lock_info(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return json.loads(os.read(fd, 4096).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}


def acquire(workdir: str) -> None:
    """Takes WORKDIR/run.lock or raises WorkdirError naming the process that holds it."""
    import fcntl

    if not is_local(workdir):
        logging.info("%s is not a local path: it is not locked against a second run", workdir)
        return
    check_workdir(workdir)
    path = _lock_path(workdir)
    if path in _HELD:
        _HELD[path][1] += 1
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        info = _read_lock_info(fd)
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        raise WorkdirError(
            f"{workdir} is in use by another run ({holder_text(info)}); wait for it to "
            "finish, stop it, or pick another --workdir"
        ) from None
    previous = _read_lock_info(fd)
    if previous.get("pid") and previous.get("pid") != os.getpid():
        # flock is released by the kernel when its holder dies: the file is all that is left.
        logging.info(
            "took over the stale lock of a dead run (%s) in %s", holder_text(previous), workdir
        )
    mine = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start_time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(mine).encode())
    _HELD[path] = [fd, 1]


def live_holder(workdir: str) -> dict | None:
    """The holder ({'pid', 'host', 'start_time'}) of WORKDIR/run.lock when a live process
    other than this one holds it, else None. Probes with a non-blocking shared flock on its
    own descriptor, released at once, so the lock is never taken."""
    import fcntl

    path = _lock_path(workdir)
    if not is_local(workdir) or path in _HELD or not os.path.exists(path):
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise
        return _read_lock_info(fd) or {"pid": "?"}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def release(workdir: str) -> None:
    """Releases one `acquire`; the lock file stays, emptied."""
    path = _lock_path(workdir)
    held = _HELD.get(path)
    if held is None:
        return
    held[1] -= 1
    if held[1] == 0:
        os.ftruncate(held[0], 0)  # a clean exit leaves no holder to report as stale
        os.close(held[0])  # closing the descriptor releases the flock
        del _HELD[path]


@contextlib.contextmanager
def hold(workdir: str, *, locking: bool = True) -> Iterator[None]:
    """`acquire` for the duration of a `with` block; `locking=False` on processes > 0."""
    if locking:
        acquire(workdir)
    try:
        yield
    finally:
        if locking:
            release(workdir)


# ---------------------------------------------------------------------------------------
# Config of a resumed run
# ---------------------------------------------------------------------------------------


def config_changes(saved: Mapping, current: Mapping) -> tuple[dict, dict]:
    """(refused, accepted): field -> (saved value, current value) for every changed field.

    A field present on one side only (a run recorded by an older version) is accepted.
    """
    old, new = defaults.flatten(saved), defaults.flatten(current)
    refused, accepted = {}, {}
    for name in sorted(old.keys() | new.keys()):
        if name not in old or name not in new or old[name] == new[name]:
            if (name in old) != (name in new):
                accepted[name] = (old.get(name, "<absent>"), new.get(name, "<absent>"))
            continue
        safe = name in SAFE_TO_CHANGE or unused_by(saved, name)
        (accepted if safe else refused)[name] = (old[name], new[name])
    return refused, accepted


def has_checkpoints(workdir: str) -> bool:
    from ltkd_jax.training import checkpointing

    return bool(checkpointing.saved_steps(workdir))


def check_resume_config(workdir: str, config) -> dict:
    """Refuses to resume a run in `workdir` with a config that changes its checkpoints'
    meaning (WorkdirError naming each field with both values); logs accepted changes.
    Returns {field: (saved, now)} of the changes `config.resume_overrides` let through.

    Runs before anything is written, so a refused run leaves `config.json` as it was.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path) or not has_checkpoints(workdir):
        return {}  # a new run, or one that never saved a checkpoint: nothing to contradict
    with open(path) as f:
        saved = defaults.upgrade_saved_config(json.load(f))
    current = json.loads(json.dumps(config.to_dict(), default=str))
    refused, accepted = config_changes(saved, current)
    names = set(defaults.override_names(config)) & defaults.RESUME_OVERRIDABLE
    overridden = {name: refused.pop(name) for name in sorted(names & refused.keys())}
    if refused:
        fields = "; ".join(f"config.{k}: saved {o!r}, now {n!r}" for k, (o, n) in refused.items())
        raise WorkdirError(
            f"{workdir} holds a run with another config ({fields}). Resuming would mix two "
            "runs: pass the saved values, or pick a new --workdir."
        )
    for name, (old, new) in accepted.items():
        logging.info("resuming %s with config.%s=%r (was %r)", workdir, name, new, old)
    for name, (old, new) in overridden.items():
        logging.warning(
            "resuming %s with config.%s=%r, trained so far with %r (config.resume_overrides)",
            workdir,
            name,
            new,
            old,
        )
    return overridden


# ---------------------------------------------------------------------------------------
# What was run
# ---------------------------------------------------------------------------------------


def git_commit() -> str | None:
    """The commit of the ltkd_jax checkout, '+dirty' when it has local changes; None if none."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(
            ["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def record_invocation(
    workdir: str, argv: list[str] | None = None, overrides: Mapping | None = None
) -> dict:
    """Appends this start (time, host, pid, command line, git commit, and the resume
    overrides `check_resume_config` let through: field -> [saved, now]) to
    invocations.jsonl."""
    record = {
        "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": list(sys.argv if argv is None else argv),
        "git_commit": git_commit(),
    }
    if overrides:
        record["resume_overrides"] = {k: list(v) for k, v in overrides.items()}
    if is_local(workdir):
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, INVOCATIONS_NAME), "a") as f:
            f.write(json.dumps(record) + "\n")
    return record


def recorded_overrides(workdir: str) -> list[dict]:
    """[{'time', 'fields': {field: [saved, now]}}] of every start that changed a field
    through config.resume_overrides, from invocations.jsonl (for the summary)."""
    path = os.path.join(workdir, INVOCATIONS_NAME)
    if not is_local(workdir) or not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line: that start recorded nothing else
            if record.get("resume_overrides"):
                out.append({"time": record.get("time"), "fields": record["resume_overrides"]})
    return out


# ---------------------------------------------------------------------------------------
# run.log
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def log_to_file(
    workdir: str, filters: tuple | None = None, *, enabled: bool | None = None
) -> Iterator[None]:
    """Copies every log line of the job into WORKDIR/run.log (appended across resumes).

    `filters`: the log filters (default: those of absl's stderr handler, so run.log drops
    what the console drops); `enabled`: default on process 0 only."""
    import logging as logging_std

    import jax

    if filters is None:
        filters = tuple(logging.get_absl_handler().filters)
    if enabled is None:
        enabled = jax.process_index() == 0
    if not is_local(workdir) or not enabled:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    handler = logging_std.FileHandler(os.path.join(workdir, "run.log"))
    handler.setFormatter(logging.PythonFormatter())
    handler.setLevel(logging_std.INFO)
    for f in filters:
        handler.addFilter(f)
    root = logging_std.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
