"""Orbax checkpoints of the train state and the input iterator, saved together.

A run's checkpoints live in `WORKDIR/checkpoints`. Each holds two items: `state` (the
student's TrainState) and `data` (the grain iterator position), so a resumed run sees
exactly the batches it would have seen. Retention keeps the latest N *and* the best by
test top-1; orbax's legacy `max_to_keep` + `best_fn` would delete the latest step and
break resume (its state must be saved with the model). Teachers are never written here.

A checkpoint that cannot be restored (a kill mid-write on a file system without atomic
renames, a truncated file) is reported in one line with the innermost reason and the
previous one is tried, newest first. The unrestorable ones are moved to
`WORKDIR/unrestorable_checkpoints/` (never deleted), so the resumed run can save those steps
again.

A save that fails (out of disk space, an I/O error) stops the run at the next chunk with
one `SaveError` naming the path, the bytes a checkpoint needs and the bytes free; the
partial directory is removed and the committed checkpoints stay (orbax deletes old ones only
after a new one is committed). `warn_if_short_of_space` warns before training.
"""

from __future__ import annotations

import errno
import json
import os
import shutil

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from ltkd_jax import errors
from ltkd_jax.errors import UserError

BEST_METRIC = "top1"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")


def saved_steps(workdir: str) -> list[int]:
    """The committed checkpoint steps of a run directory, ascending, read from the directory
    names (orbax writes a step under a temporary name and renames it when complete)."""
    ckpt = checkpoint_dir(workdir)
    if not os.path.isdir(ckpt):
        return []
    return sorted(int(name) for name in os.listdir(ckpt) if name.isdigit())


def make_manager(workdir: str, *, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
    """A manager keeping the latest `keep` checkpoints plus the best one by test top-1."""
    policy = checkpoint_managers.AnyPreservationPolicy(
        [
            checkpoint_managers.LatestN(n=keep),
            # reverse=False keeps the *highest* metric (orbax BestN).
            # Checkpoints without metrics (saved on preemption) are LatestN's to keep.
            checkpoint_managers.BestN(
                n=1,
                get_metric_fn=lambda m: m[BEST_METRIC],
                reverse=False,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        best_fn=lambda m: m[BEST_METRIC],
        best_mode="max",
        read_only=read_only,
        create=not read_only,
        save_interval_steps=0 if read_only else 1,
        # A save killed mid-write leaves its temporary directory: removed when the run
        # resumes (it was never committed, so nothing is lost), its space freed.
        cleanup_tmp_directories=not read_only,
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir), options=options, item_names=("state", "data")
    )


class CheckpointError(UserError):
    """No checkpoint of a run directory can be restored."""


class SaveError(UserError):
    """A checkpoint could not be written (no space left, an I/O error): the run stops."""


def _chain(error: BaseException) -> list[BaseException]:
    """The error and its causes, outermost first (a context raised `from None` is not a
    cause: json's StopIteration behind its JSONDecodeError)."""
    out, seen = [], set()
    while error is not None and id(error) not in seen:
        out.append(error)
        seen.add(id(error))
        hidden = error.__suppress_context__
        error = error.__cause__ or (None if hidden else error.__context__)
    return out


def _reason(error: BaseException) -> str:
    """One readable line: the innermost error with a message (tensorstore's status names
    the file), without the repr of a TensorStore spec that orbax appends."""
    for e in reversed(_chain(error)):
        text = str(e).split("See full TensorStore details")[0].strip()
        if text:
            return f"{type(e).__name__}: {text.splitlines()[0][:300]}"
    return type(error).__name__


# tensorstore reports file-system failures as status codes inside ValueErrors.
_IO_STATUS = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "DATA_LOSS", "UNAVAILABLE", "os_error")


def _is_io_failure(error: BaseException) -> bool:
    return any(
        isinstance(e, OSError) or any(c in str(e) for c in _IO_STATUS) for e in _chain(error)
    )


def _is_out_of_space(error: BaseException) -> bool:
    return any(
        getattr(e, "errno", None) == errno.ENOSPC
        or "No space left on device" in str(e)
        or "os_error_code='28'" in str(e)
        for e in _chain(error)
    )


def state_bytes(state) -> int:
    """The bytes of a state's arrays (or of their shapes: `jax.ShapeDtypeStruct`s)."""
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))


def checkpoint_bytes(workdir: str, state) -> int:
    """What one checkpoint of `state` takes on disk: the size of the run's latest committed
    checkpoint, else its arrays' bytes (the metadata adds ~8% on the tiny digits ResNet-8,
    less on larger models)."""
    steps = saved_steps(workdir)
    if not steps:
        return state_bytes(state)
    step_dir = os.path.join(checkpoint_dir(workdir), str(steps[-1]))
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(step_dir)
        for name in names
    )


def _free_bytes(path: str) -> int:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


def warn_if_short_of_space(workdir: str, state, keep: int) -> None:
    """Warns when the file system of WORKDIR/checkpoints has less room than the run will
    hold at once: the latest `keep`, the best, and the one being written."""
    directory = checkpoint_dir(workdir)
    if "://" in directory or jax.process_index() != 0:
        return
    one = checkpoint_bytes(workdir, state)
    need, free = (keep + 2) * one, _free_bytes(directory)
    held = one * len(saved_steps(workdir))  # already on disk: counted in `need`, not free
    if free + held < need:
        logging.warning(
            "only %s bytes are free for %s, and the run keeps up to %d checkpoints of about %s "
            "bytes at once (the latest %d, the best, the one being written): free some space "
            "or lower --config.keep_checkpoints, or a save will fail",
            f"{free:,}",
            directory,
            keep + 2,
            f"{one:,}",
            keep,
        )


def _partial_saves(manager: ocp.CheckpointManager) -> list[str]:
    root = str(manager.directory)
    return sorted(n for n in os.listdir(root) if ".orbax-checkpoint-tmp" in n)


def _save_failed(manager: ocp.CheckpointManager, error: BaseException, state) -> SaveError:
    """The one message of a failed save: what, where, why (bytes needed and free when the
    disk is full), what is kept, and the fix."""
    root = str(manager.directory)
    partial = [n.split(".")[0] for n in _partial_saves(manager)]
    what = f"checkpoint {partial[0]}" if partial else "a checkpoint"
    if _is_out_of_space(error):
        need = checkpoint_bytes(os.path.dirname(root), state)
        cause = (
            f"no space left on the device: a checkpoint needs about {need:,} bytes, "
            f"{_free_bytes(root):,} bytes are free"
        )
        fix = "free some space (or lower --config.keep_checkpoints)"
    else:
        cause, fix = _reason(error), "fix the cause"
    kept = saved_steps(os.path.dirname(root))
    kept_text = (
        f"The last good checkpoint, step {kept[-1]}, is kept"
        if kept
        else "No checkpoint was saved before it: nothing is kept, a rerun starts from step 0"
    )
    return SaveError(
        f"saving {what} in {root} failed ({cause}). {kept_text}; {fix}, then rerun the same "
        "command to resume."
    )


def save(manager: ocp.CheckpointManager, step: int, state, iterator, metrics: dict | None) -> None:
    """Saves state and iterator position (asynchronously: `raise_if_save_failed` and
    `finish` report a failure). orbax waits here for the previous save, so its failure
    surfaces here too: a SaveError."""
    try:
        manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator)
            ),
            metrics=metrics,
        )
    except Exception as e:
        if not _is_io_failure(e):
            raise
        raise _save_failed(manager, e, state) from e


def raise_if_save_failed(manager: ocp.CheckpointManager, state) -> None:
    """SaveError as soon as the background save has failed (polled every chunk: the run
    stops at once instead of training on without checkpoints). A finished save is joined
    here: orbax's finalize thread has then seen the failure itself, so it removes nothing."""
    if manager.is_saving_in_progress():
        return
    try:
        manager.wait_until_finished()
    except Exception as e:
        if not _is_io_failure(e):
            raise
        raise _save_failed(manager, e, state) from e


def finish(manager: ocp.CheckpointManager, state) -> None:
    """Waits for the last save and closes the manager, so no orbax thread outlives the run
    (their tracebacks at interpreter exit); a failed save's partial directory is removed
    and the failure raised as SaveError."""
    error = None
    try:
        manager.wait_until_finished()
    except Exception as e:
        if not _is_io_failure(e):
            raise
        error = _save_failed(manager, e, state)
        error.__cause__ = e
    try:
        manager.close()
    except Exception:  # noqa: BLE001 - the failure of that save is `error`, reported below
        pass
    if jax.process_index() == 0 and os.path.isdir(str(manager.directory)):
        # Nothing is in flight now: a temporary step directory is a save that never
        # committed; it holds nothing to keep, and its space goes back.
        for name in _partial_saves(manager):
            shutil.rmtree(os.path.join(str(manager.directory), name), ignore_errors=True)
    if error is not None:
        raise error


def _restore_newest_first(manager: ocp.CheckpointManager, restore_fn, steps: list[int]):
    """(step, restore_fn(step), failures) of the newest of `steps` that restores, logging
    each that does not; (None, None, []) without steps. Raises CheckpointError when none
    restores."""
    steps = sorted(steps, reverse=True)
    failures = []
    for step in steps:
        try:
            return step, restore_fn(step), failures
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: try the previous
            failures.append((step, _reason(e)))
            logging.warning(
                "checkpoint %d in %s cannot be restored (%s)%s",
                step,
                manager.directory,
                failures[-1][1],
                "; trying the previous one" if step != steps[-1] else "",
            )
    if not failures:
        return None, None, failures
    raise CheckpointError(
        f"none of the {len(steps)} checkpoint(s) in {manager.directory} (steps "
        f"{', '.join(str(s) for s, _ in failures)}) can be restored; the newest failed with "
        f"{failures[0][1]}. Nothing was deleted. To start this run over, move that directory "
        "away (or pass a new --workdir); to keep its progress, restore the directory from a "
        "backup."
    )


def _set_aside(manager: ocp.CheckpointManager, steps: list[int], folder: str, why: str) -> None:
    """Moves step directories out of orbax's view into WORKDIR/`folder` (kept, not deleted)."""
    if not steps or jax.process_index() != 0:
        return
    root = os.path.join(os.path.dirname(str(manager.directory)), folder)
    os.makedirs(root, exist_ok=True)
    for step in steps:
        target = os.path.join(root, str(step))
        suffix = 0
        while os.path.exists(target):
            suffix += 1
            target = os.path.join(root, f"{step}.{suffix}")
        shutil.move(os.path.join(str(manager.directory), str(step)), target)
        logging.warning("moved checkpoint %d (%s) to %s (kept, not deleted)", step, why, target)
    manager.reload()


def restore_latest(manager: ocp.CheckpointManager, state, iterator, max_step: int | None = None):
    """Restores the newest restorable checkpoint (at most `max_step`) into the shapes and
    shardings of `state` and into `iterator`. Newer, unrestorable ones are set aside (see the
    module docstring), and so are those after `max_step` (a cohort member saved ahead of the
    others before a kill: its resumed run writes them again).

    Returns the restored state, or None when the directory holds no checkpoint.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)

    def restore(step):
        return manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                data=grain.checkpoint.CheckpointRestore(iterator),
            ),
        )

    steps = list(manager.all_steps())
    ahead = [s for s in steps if max_step is not None and s > max_step]
    _set_aside(manager, ahead, "set_aside_checkpoints", "ahead of the cohort's common step")
    steps = [s for s in steps if s not in ahead]
    step, restored, failures = _restore_newest_first(manager, restore, steps)
    if restored is None:
        return None
    _set_aside(manager, [s for s, _ in failures], "unrestorable_checkpoints", "unrestorable")
    return restored["state"]


def saved_param_names(workdir: str, step: int | None = None) -> set[str]:
    """The top-level parameter names stored in checkpoint `step` (default the latest) of
    `workdir`, read from its metadata; empty when there is no checkpoint."""
    if step is None:
        manager = make_manager(workdir, read_only=True)
        step = manager.latest_step()
        manager.close()
        if step is None:
            return set()
    path = os.path.join(checkpoint_dir(workdir), str(step), "state")
    try:
        metadata = ocp.PyTreeCheckpointer().metadata(path)
        tree = getattr(metadata, "item_metadata", metadata)
        tree = getattr(tree, "tree", tree)
        if tree is None:  # orbax logs why and returns None
            raise ValueError(f"no readable tree metadata under {path}")
        return set(tree["params"])
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: one message, the fix
        raise _unreadable_finished_run(workdir, step, e) from e


def _unreadable_finished_run(workdir: str, step: int, error: BaseException) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {step} of the finished run in {workdir} cannot be read ({_reason(error)}). "
        "Rerun that run's own command with the same --workdir: it sets the unreadable "
        "checkpoint aside, resumes from the previous one and saves it again."
    )


def restore_variables(workdir: str, target: dict, *, step: int | None = None) -> tuple[dict, int]:
    """Reads `{'params', 'batch_stats'}` of a finished run read-only (a teacher).

    `target` gives the expected structure, shapes and shardings; only those leaves are read
    (no optimiser state, no iterator). Without `step`, the latest checkpoint: an older one
    would be another teacher, so an unrestorable latest one is an error naming the fix.
    Returns (variables, step).
    """
    manager = make_manager(workdir, read_only=True)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise CheckpointError(
            f"no checkpoint under {checkpoint_dir(workdir)}; train the teacher first or point "
            "the config at a finished run's workdir"
        )
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=target, restore_args=restore_args, partial_restore=True
                )
            ),
        )
    except Exception as e:  # noqa: BLE001 - reported with the fix
        raise _unreadable_finished_run(workdir, step, e) from e
    finally:
        manager.close()
    return restored["state"], step


def check_resume_data(workdir: str, fingerprint: str) -> None:
    """Refuses to resume (or to call finished) a run in `workdir` whose saved
    `data_fingerprint` (task.json) is not `fingerprint`, the data's now: images were added,
    removed or changed since it trained. Runs before anything is written, so the run keeps
    the fingerprint of the data it was trained on. '' (data known by name only) passes."""
    path = os.path.join(workdir, "task.json")
    if not fingerprint or not os.path.exists(path) or not saved_steps(workdir):
        return
    with open(path) as f:
        saved = json.load(f).get("data_fingerprint", "")
    if saved and saved != fingerprint:
        raise errors.WorkdirError(
            f"{workdir} holds a run trained on other data: its task.json has data fingerprint "
            f"{saved[:12]}, the data now {fingerprint[:12]} (images added, removed or changed "
            "since). Resuming would mix two datasets. Pass a new --workdir to train on the "
            "data as it is now, or restore the data the run was trained on."
        )
