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
- Preemption: `install_signal_handlers()` turns SIGTERM (Cloud TPU VM preemption) and SIGINT
  into a flag; the train loop polls `stop_requested()` at the end of every chunk of steps
  (on several processes: whether any of them got one), saves a checkpoint and raises
  `Preempted`, which the command line reports and exits 0 on.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping

from absl import logging

from ltkd_jax.config import defaults
from ltkd_jax.errors import UserError

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
        "device_loop",
    }
)


def unused_by(saved: Mapping, name: str) -> bool:
    """True for a field the saved run never read: a CE run (every stage-1 teacher) has no
    teacher of its own, so the teacher section means nothing to its checkpoints."""
    return saved.get("method") == "ce" and name.startswith("teacher.")


class WorkdirError(UserError):
    """The workdir cannot be used: a file, not writable, held by another process, or
    holding a run whose config conflicts with this one."""


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


def _holder_text(info: Mapping) -> str:
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
            f"{workdir} is in use by another run ({_holder_text(info)}); wait for it to "
            "finish, stop it, or pick another --workdir"
        ) from None
    previous = _read_lock_info(fd)
    if previous.get("pid") and previous.get("pid") != os.getpid():
        # flock is released by the kernel when its holder dies: the file is all that is left.
        logging.info(
            "took over the stale lock of a dead run (%s) in %s", _holder_text(previous), workdir
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


def flatten(tree: Mapping, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; tuples and lists compared as lists."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, (tuple, list)) else value
    return out


def config_changes(saved: Mapping, current: Mapping) -> tuple[dict, dict]:
    """(refused, accepted): field -> (saved value, current value) for every changed field.

    A field present on one side only (a run recorded by an older version) is accepted.
    """
    old, new = flatten(saved), flatten(current)
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

    ckpt = checkpointing.checkpoint_dir(workdir)
    return os.path.isdir(ckpt) and any(name.isdigit() for name in os.listdir(ckpt))


def check_resume_config(workdir: str, config) -> None:
    """Refuses to resume a run in `workdir` with a config that changes its checkpoints'
    meaning (WorkdirError naming each field with both values); logs accepted changes.

    Runs before anything is written, so a refused run leaves `config.json` as it was.
    """
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path) or not has_checkpoints(workdir):
        return  # a new run, or one that never saved a checkpoint: nothing to contradict
    with open(path) as f:
        saved = defaults.upgrade_saved_config(json.load(f))
    current = json.loads(json.dumps(config.to_dict(), default=str))
    refused, accepted = config_changes(saved, current)
    if refused:
        fields = "; ".join(f"config.{k}: saved {o!r}, now {n!r}" for k, (o, n) in refused.items())
        raise WorkdirError(
            f"{workdir} holds a run with another config ({fields}). Resuming would mix two "
            "runs: pass the saved values, or pick a new --workdir."
        )
    for name, (old, new) in accepted.items():
        logging.info("resuming %s with config.%s=%r (was %r)", workdir, name, new, old)


def check_resume_data(workdir: str, fingerprint: str) -> None:
    """Refuses to resume (or to call finished) a run in `workdir` whose saved
    `data_fingerprint` (task.json) is not `fingerprint`, the data's now: images were added,
    removed or changed since it trained. Runs before anything is written, so the run keeps
    the fingerprint of the data it was trained on. '' (data known by name only) passes."""
    path = os.path.join(workdir, "task.json")
    if not fingerprint or not os.path.exists(path) or not has_checkpoints(workdir):
        return
    with open(path) as f:
        saved = json.load(f).get("data_fingerprint", "")
    if saved and saved != fingerprint:
        raise WorkdirError(
            f"{workdir} holds a run trained on other data: its task.json has data fingerprint "
            f"{saved[:12]}, the data now {fingerprint[:12]} (images added, removed or changed "
            "since). Resuming would mix two datasets. Pass a new --workdir to train on the "
            "data as it is now, or restore the data the run was trained on."
        )


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


def record_invocation(workdir: str, argv: list[str] | None = None) -> dict:
    """Appends this start (time, host, pid, command line, git commit) to invocations.jsonl."""
    record = {
        "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": list(sys.argv if argv is None else argv),
        "git_commit": git_commit(),
    }
    if is_local(workdir):
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, INVOCATIONS_NAME), "a") as f:
            f.write(json.dumps(record) + "\n")
    return record


# ---------------------------------------------------------------------------------------
# Preemption
# ---------------------------------------------------------------------------------------

_STOP: dict[str, int | None] = {"signal": None}


class Preempted(Exception):  # noqa: N818 - not an error: the run stopped where asked
    """Raised by the train loop after it saved a checkpoint on SIGTERM / SIGINT."""

    def __init__(self, step: int, workdir: str):
        self.step, self.workdir = step, workdir
        super().__init__(
            f"stopped by {signal_name()}: checkpoint saved at step {step} in {workdir}; "
            "rerun the same command to resume"
        )


def _request_stop(signum, frame) -> None:
    del frame
    if _STOP["signal"] is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C stops at once
    _STOP["signal"] = signum
    logging.warning(
        "%s received: saving a checkpoint at the next step, then exiting (Ctrl-C again to "
        "stop at once)",
        signal.Signals(signum).name,
    )


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT ask the train loop to checkpoint and stop (main thread only)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _request_stop)


def stop_requested() -> bool:
    """True once SIGTERM or SIGINT arrived; the train loop checks it at step boundaries."""
    return _STOP["signal"] is not None


def signal_name() -> str:
    return signal.Signals(_STOP["signal"]).name if _STOP["signal"] is not None else "request"


def reset_stop() -> None:
    """Clears a stop request (tests; a notebook that keeps going)."""
    _STOP["signal"] = None


# ---------------------------------------------------------------------------------------
# run.log and summary.json
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


def write_summary(workdir: str, summary: Mapping) -> None:
    """WORKDIR/summary.json: the final and best evaluations (top-1, many / medium / few);
    written by process 0."""
    import jax

    if not is_local(workdir) or jax.process_index() != 0:
        return
    path = os.path.join(workdir, "summary.json")
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=2, default=str)
    os.replace(path + ".tmp", path)  # a kill mid-write leaves the previous summary
