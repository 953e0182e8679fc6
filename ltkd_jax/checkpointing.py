"""Orbax checkpoints of the train state and the input iterator, saved together.

A run's checkpoints live in `WORKDIR/checkpoints`. Each holds two items: `state` (the
student's TrainState) and `data` (the grain iterator position), so a resumed run sees
exactly the batches it would have seen. Retention keeps the latest N *and* the best by
test top-1; orbax's legacy `max_to_keep` + `best_fn` would delete the latest step and
break resume (style.md 2.e). Teachers are never written here.
"""

from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

BEST_METRIC = "top1"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")


def make_manager(workdir: str, *, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
    """A manager keeping the latest `keep` checkpoints plus the best one by test top-1."""
    policy = checkpoint_managers.AnyPreservationPolicy(
        [
            checkpoint_managers.LatestN(n=keep),
            # reverse=False keeps the *highest* metric (verified in style.md 2.e).
            checkpoint_managers.BestN(n=1, get_metric_fn=lambda m: m[BEST_METRIC], reverse=False),
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


def restore_latest(manager: ocp.CheckpointManager, state, iterator):
    """Restores the latest checkpoint into the shapes/shardings of `state` and into `iterator`.

    Returns the restored state, or None when the directory holds no checkpoint.
    """
    step = manager.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            data=grain.checkpoint.CheckpointRestore(iterator),
        ),
    )
    return restored["state"]


def restore_variables(workdir: str, target: dict, *, step: int | None = None) -> tuple[dict, int]:
    """Reads `{'params', 'batch_stats'}` of a finished run read-only (a teacher).

    `target` gives the expected structure, shapes and shardings; only those leaves are read
    (no optimiser state, no iterator). Returns (variables, step).
    """
    manager = make_manager(workdir, read_only=True)
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(
            f"no checkpoint under {checkpoint_dir(workdir)}; train the teacher first or point "
            "the config at a finished run's workdir"
        )
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=target, restore_args=restore_args, partial_restore=True
            )
        ),
    )
    manager.close()
    return restored["state"], step
