"""Orbax checkpoints of the train state and the input iterator, saved together.

A run's checkpoints live in `WORKDIR/checkpoints`. Each holds two items: `state` (the
student's TrainState) and `data` (the grain iterator position), so a resumed run sees
exactly the batches it would have seen. Retention keeps the latest N *and* the best by
test top-1; orbax's legacy `max_to_keep` + `best_fn` would delete the latest step and
break resume (its state must be saved with the model). Teachers are never written here.

A checkpoint that cannot be restored (a kill mid-write on a file system without atomic
renames, a truncated file) is reported and the previous one is tried, newest first. The
unrestorable ones are moved to `WORKDIR/unrestorable_checkpoints/` (never deleted), so the
resumed run can save those steps again.
"""

from __future__ import annotations

import os
import shutil

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

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
    )
    return ocp.CheckpointManager(
        checkpoint_dir(workdir), options=options, item_names=("state", "data")
    )


def save(manager: ocp.CheckpointManager, step: int, state, iterator, metrics: dict | None) -> None:
    """Saves state and iterator position (asynchronously; `manager.wait_until_finished()`)."""
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator)
        ),
        metrics=metrics,
    )


class CheckpointError(UserError):
    """No checkpoint of a run directory can be restored."""


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _restore_newest_first(manager: ocp.CheckpointManager, restore_fn):
    """(step, restore_fn(step), failures) of the newest checkpoint that restores, logging
    each that does not; (None, None, []) without checkpoints. Raises CheckpointError when
    none restores."""
    steps = sorted(manager.all_steps(), reverse=True)
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


def _set_aside(manager: ocp.CheckpointManager, steps: list[int]) -> None:
    """Moves unrestorable step directories out of orbax's view (kept for inspection)."""
    if not steps or jax.process_index() != 0:
        return
    root = os.path.join(os.path.dirname(str(manager.directory)), "unrestorable_checkpoints")
    os.makedirs(root, exist_ok=True)
    for step in steps:
        target = os.path.join(root, str(step))
        suffix = 0
        while os.path.exists(target):
            suffix += 1
            target = os.path.join(root, f"{step}.{suffix}")
        shutil.move(os.path.join(str(manager.directory), str(step)), target)
        logging.warning(
            "moved the unrestorable checkpoint %d to %s (kept, not deleted)", step, target
        )
    manager.reload()


def restore_latest(manager: ocp.CheckpointManager, state, iterator):
    """Restores the newest restorable checkpoint into the shapes/shardings of `state` and
    into `iterator`; newer, unrestorable ones are set aside (see the module docstring).

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

    step, restored, failures = _restore_newest_first(manager, restore)
    if restored is None:
        return None
    _set_aside(manager, [s for s, _ in failures])
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
    metadata = ocp.PyTreeCheckpointer().metadata(path)
    tree = getattr(metadata, "item_metadata", metadata)
    return set(getattr(tree, "tree", tree)["params"])


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
        raise CheckpointError(
            f"checkpoint {step} of the finished run in {workdir} cannot be read ({_reason(e)}). "
            "Rerun that run's own command with the same --workdir: it sets the unreadable "
            "checkpoint aside, resumes from the previous one and saves it again."
        ) from e
    finally:
        manager.close()
    return restored["state"], step
