"""Finished run directories as inputs: the one way a run is loaded, whether as a teacher, as
the run a cRT or post-hoc correction starts from, or as the model `predict`, `evaluate` and
`export` deploy.

`load(workdir)` reads the run's config (in today's layout, `config.defaults.
upgrade_saved_config`) and task, rebuilds its network from the config alone
(`networks.build_model`) and restores a checkpoint read-only, runs written before the method
owned its parameters included (`models.migrate_variables`). `load_teacher` and `load_init`
first check the run against the task at hand.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import ml_collections
import numpy as np
from absl import logging

from ltkd_jax import data, models
from ltkd_jax.config import defaults
from ltkd_jax.errors import UserError
from ltkd_jax.runs import rundir
from ltkd_jax.training import checkpointing, networks, sharding

CHECKPOINTS = ("last", "best")


# The run directories a config reads: (field, what the messages call it, its section).
INPUT_RUNS = (
    ("teacher.workdir", "the teacher", "teacher"),
    ("init.workdir", "the init run", "init"),
)


def input_workdirs(config, field: str) -> list[str]:
    """The run directories `config.<field>` names (comma-separated for an ensemble)."""
    section, name = field.split(".")
    return [p.strip() for p in config[section][name].split(",") if p.strip()]


def unfinished_reason(workdir: str) -> str | None:
    """Why the run in `workdir` is not a finished run another may read, or None.

    Unfinished: its latest checkpoint is short of its configured steps (`num_epochs` in
    config.json x `steps_per_epoch` in task.json; both rewritten when a resume changes them).
    In use: a live process holds its run.lock (`rundir.live_holder`), so it may still train.
    """
    holder = rundir.live_holder(workdir)
    if holder is not None:
        running = rundir.holder_text(holder)
        return f"is in use by a running process ({running}): it may still be training"
    run_config, run_task = read_run_info(workdir)
    per_epoch = run_task.get("steps_per_epoch")
    if not per_epoch:
        return None  # a run directory that does not record it: nothing to compare
    total = int(run_config.num_epochs) * int(per_epoch)
    reached = max(checkpointing.saved_steps(workdir), default=0)
    if reached >= total:
        return None
    return (
        f"is unfinished: its latest checkpoint is step {reached} of {total} "
        f"({run_config.num_epochs} epochs of {per_epoch} steps)"
    )


def _used_anyway(what: str, workdir: str, reason: str, section: str) -> str:
    return f"{what} in {workdir} {reason}; used anyway (config.{section}.allow_unfinished=true)"


def check_finished(workdir: str, what: str, section: str, allow: bool) -> str | None:
    """Refuses (UserError naming the step reached and the fix) a teacher or init run that
    `unfinished_reason` rejects. With `allow` (config.<section>.allow_unfinished) it logs
    and returns the warning instead; None for a finished run."""
    reason = unfinished_reason(workdir)
    if reason is None:
        return None
    if not allow:
        raise UserError(
            f"{what} in {workdir} {reason}. Finish it first (wait for it, or rerun its own "
            f"command with --workdir={workdir}), or pass --config.{section}.allow_unfinished"
            "=true to use it as it is."
        )
    warning = _used_anyway(what, workdir, reason, section)
    logging.warning("%s", warning)
    return warning


def allowed_unfinished(config) -> list[str]:
    """The warnings, for the summary, of every unfinished teacher or init run that
    config.<section>.allow_unfinished lets this run read."""
    warnings = []
    for field, what, section in INPUT_RUNS:
        if not config[section].allow_unfinished:
            continue
        for workdir in input_workdirs(config, field):
            if "://" not in workdir and (reason := unfinished_reason(workdir)):
                warnings.append(_used_anyway(what, workdir, reason, section))
    return warnings


@dataclasses.dataclass(frozen=True)
class FinishedRun:
    """A finished run's network and variables (replicated on `mesh`), read-only."""

    workdir: str
    config: ml_collections.ConfigDict
    task: dict  # its task.json
    model: object
    variables: dict
    step: int
    mesh: jax.sharding.Mesh

    @property
    def num_classes(self) -> int:
        return int(self.task["num_classes"])

    @property
    def class_counts(self) -> np.ndarray:
        return np.asarray(self.task["class_counts"], np.int64)

    @property
    def class_groups(self) -> np.ndarray:
        return np.asarray(self.task["class_groups"], np.int64)

    @property
    def batch_size(self) -> int:
        """The run's evaluation batch, rounded up to a multiple of the mesh's devices."""
        n = self.mesh.devices.size
        return -(-int(self.config.eval_batch_size) // n) * n

    def as_teacher(self) -> networks.Teacher:
        return networks.Teacher(variables=self.variables, model=self.model)


def read_run_info(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
    """The config (in today's layout) and the task description a run wrote into its workdir."""
    paths = [os.path.join(workdir, name) for name in ("config.json", "task.json")]
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} not found: {workdir} is not a ltkd_jax run directory (or the run never "
                "started); pass the --workdir of a finished run"
            )
    with open(paths[0]) as f:
        run_config = ml_collections.ConfigDict(defaults.upgrade_saved_config(json.load(f)))
    with open(paths[1]) as f:
        run_task = json.load(f)
    return run_config, run_task


def checkpoint_step(workdir: str, checkpoint: str) -> int:
    """The step of `checkpoint`: 'last', 'best' (by test top-1) or a step number."""
    manager = checkpointing.make_manager(workdir, read_only=True)
    try:
        if checkpoint == "last":
            step = manager.latest_step()
        elif checkpoint == "best":
            step = manager.best_step()
        elif checkpoint.isdigit():
            step = int(checkpoint) if int(checkpoint) in manager.all_steps() else None
        else:
            raise ValueError(f"--checkpoint={checkpoint!r}; use last, best or a step number")
        if step is None:
            raise FileNotFoundError(
                f"no {checkpoint!r} checkpoint under {checkpointing.checkpoint_dir(workdir)} "
                f"(steps there: {sorted(manager.all_steps())}); pick one of those, or point "
                "--workdir at a run that finished at least one evaluation"
            )
        return step
    finally:
        manager.close()


def restore(workdir: str, target: dict, step: int | None = None) -> tuple[dict, int]:
    """Checkpoint `step` (default the latest) of a run as `{'params', 'batch_stats'}` in
    `target`'s structure and shardings, from runs written before the method owned its
    parameters too (`models.migrate_variables`)."""
    if not models.needs_migration(checkpointing.saved_param_names(workdir, step)):
        return checkpointing.restore_variables(workdir, target, step=step)
    legacy = models.legacy_variables(target)
    variables, step = checkpointing.restore_variables(workdir, legacy, step=step)
    return models.migrate_variables(variables), step


def load(
    workdir: str, checkpoint: str = "last", *, mesh: jax.sharding.Mesh | None = None
) -> FinishedRun:
    """A run's checkpoint ('last', 'best' or a step), restored read-only (no optimiser state)
    into the network its config describes. The last checkpoint is the last epoch's weights,
    which is how the BKD code loads its teacher."""
    workdir = os.path.abspath(os.path.expanduser(workdir))
    run_config, run_task = read_run_info(workdir)
    mesh = mesh or sharding.make_mesh(0)
    step = checkpoint_step(workdir, checkpoint)
    model = networks.build_model(run_config, int(run_task["num_classes"]))
    target = networks.abstract_variables(model, tuple(run_task["image_shape"]), mesh)
    variables, step = restore(workdir, target, step)
    logging.info("%s (step %d) loaded from %s", run_config.model.name, step, workdir)
    return FinishedRun(workdir, run_config, run_task, model, variables, step, mesh)


def _problems(run_config, run_task: dict, config, task: data.TaskSplits) -> tuple[list, list]:
    problems, fixes = [], []
    train = task.train
    if run_config.data.name != config.data.name:
        problems.append(
            f"it was trained on {run_config.data.name!r}, the student on {config.data.name!r}"
        )
    ours, theirs = train.fingerprint, run_task.get("data_fingerprint", "")
    if ours and theirs and ours != theirs:
        problems.append(
            f"its data (fingerprint {theirs[:12]}) differs from the student's ({ours[:12]}): "
            "another folder, or the same one with images added, removed or changed"
        )
        fixes.append("retrain it on this data (omit config.teacher.workdir to train it first)")
    if run_task["num_classes"] != train.num_classes:
        problems.append(
            f"it has {run_task['num_classes']} classes, the student task {train.num_classes}"
        )
    if tuple(run_task["image_shape"]) != tuple(train.image_shape):
        size = run_task["image_shape"][0]
        problems.append(
            f"its input shape is {tuple(run_task['image_shape'])}, the student's "
            f"{tuple(train.image_shape)}"
        )
        fixes.append(
            f"set the student's image size to the run's: --config.data.image_size={size} "
            f"(size={size} in the folder configs)"
        )
    return problems, fixes


def check_compatible(
    what: str, workdir: str, run_config, run_task: dict, config, task: data.TaskSplits
) -> None:
    """A teacher / init run must match the student's task: dataset (and, for prepared image
    data, its contents' fingerprint), classes, input shape."""
    problems, fixes = _problems(run_config, run_task, config, task)
    if problems:
        fixes.append(f"point the config at a run trained on the same dataset ({config.data.name})")
        raise UserError(
            f"{what} in {workdir} does not fit this task: "
            + "; ".join(problems)
            + ". Fix: "
            + ", or ".join(fixes)
            + "."
        )


def load_teacher(
    config: ml_collections.ConfigDict, workdir: str, task: data.TaskSplits, mesh
) -> networks.Teacher:
    """A teacher run, checked against the student's task and `config.teacher.model`."""
    run_config, run_task = read_run_info(workdir)
    check_compatible("the teacher", workdir, run_config, run_task, config, task)
    check_finished(workdir, "the teacher", "teacher", config.teacher.allow_unfinished)
    if run_config.model.name != config.teacher.model:
        raise UserError(
            f"the teacher in {workdir} is a {run_config.model.name}, but config.teacher.model="
            f"{config.teacher.model!r}; set --config.teacher.model={run_config.model.name} or "
            "point config.teacher.workdir at the intended teacher"
        )
    return load(workdir, mesh=mesh).as_teacher()


def load_init(config: ml_collections.ConfigDict, task: data.TaskSplits, mesh) -> FinishedRun:
    """`config.init.workdir` (the run cRT or a post-hoc correction starts from), checked
    against the task."""
    workdir = config.init.workdir
    run_config, run_task = read_run_info(workdir)
    check_compatible("the init run", workdir, run_config, run_task, config, task)
    check_finished(workdir, "the init run", "init", config.init.allow_unfinished)
    return load(workdir, mesh=mesh)
