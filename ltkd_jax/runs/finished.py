"""Finished run directories as inputs: teachers, the run a cRT or post-hoc correction starts
from, the student to evaluate or export. Their config and task are read back, checked
against the task at hand, and their weights restored read-only."""

from __future__ import annotations

import json
import os

import jax
import ml_collections
from absl import logging

from ltkd_jax import data, methods, models
from ltkd_jax.config import defaults
from ltkd_jax.errors import UserError
from ltkd_jax.training import checkpointing
from ltkd_jax.training.networks import Teacher, abstract_variables, build_model


def read_run_info(workdir: str) -> tuple[ml_collections.ConfigDict, dict]:
    """The config (in today's layout, `defaults.upgrade_saved_config`) and the task
    description a finished run wrote into its workdir."""
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


def _problems(run_config, run_task: dict, config, num_classes, image_shape) -> tuple[list, list]:
    problems, fixes = [], []
    if run_config.data.name != config.data.name:
        problems.append(
            f"it was trained on {run_config.data.name!r}, the student on {config.data.name!r}"
        )
    ours = data.prepared_splits(config.data).train.fingerprint
    theirs = run_task.get("data_fingerprint", "")
    if ours and theirs and ours != theirs:
        problems.append(
            f"its data (fingerprint {theirs[:12]}) differs from the student's ({ours[:12]}): "
            "another folder, or the same one with images added, removed or changed"
        )
        fixes.append("retrain it on this data (omit config.teacher.workdir to train it first)")
    if run_task["num_classes"] != num_classes:
        problems.append(f"it has {run_task['num_classes']} classes, the student task {num_classes}")
    if tuple(run_task["image_shape"]) != tuple(image_shape):
        problems.append(
            f"its input shape is {tuple(run_task['image_shape'])}, the student's "
            f"{tuple(image_shape)}"
        )
        fixes.append(
            f"set the student's image size to the run's: --config.data.image_size="
            f"{run_task['image_shape'][0]} (size={run_task['image_shape'][0]} in the folder "
            "configs)"
        )
    return problems, fixes


def check_compatible(
    what: str, workdir: str, run_config, run_task: dict, config, num_classes, image_shape
) -> None:
    """A teacher / init run must match the student task: dataset (and, for prepared image
    data, its contents' fingerprint), classes, input shape."""
    problems, fixes = _problems(run_config, run_task, config, num_classes, image_shape)
    if problems:
        fixes.append(f"point the config at a run trained on the same dataset ({config.data.name})")
        raise UserError(
            f"{what} in {workdir} does not fit this task: "
            + "; ".join(problems)
            + ". Fix: "
            + ", or ".join(fixes)
            + "."
        )


def restore(workdir: str, target: dict) -> tuple[dict, int]:
    """A finished run's latest `{'params', 'batch_stats'}` in `target`'s structure and
    shardings, from runs written before the method owned its parameters too
    (`models.migrate_variables`)."""
    if not models.needs_migration(checkpointing.saved_param_names(workdir)):
        return checkpointing.restore_variables(workdir, target)
    variables, step = checkpointing.restore_variables(workdir, models.legacy_variables(target))
    return models.migrate_variables(variables), step


def load_frozen(workdir: str, run_config, num_classes: int, image_shape: tuple, mesh) -> Teacher:
    """A finished run's last checkpoint as a frozen model (the last epoch's weights, as the
    BKD code loads its teacher, not the best epoch's)."""
    model = build_model(run_config, num_classes)
    variables, step = restore(workdir, abstract_variables(model, image_shape, mesh))
    logging.info("%s (step %d) loaded from %s", run_config.model.name, step, workdir)
    return Teacher(variables=variables, model=model)


def load_teacher(config, workdir: str, num_classes: int, image_shape: tuple, mesh) -> Teacher:
    """A teacher run, checked against the student task and `config.teacher.model`."""
    run_config, run_task = read_run_info(workdir)
    check_compatible("the teacher", workdir, run_config, run_task, config, num_classes, image_shape)
    if run_config.model.name != config.teacher.model:
        raise UserError(
            f"the teacher in {workdir} is a {run_config.model.name}, but config.teacher.model="
            f"{config.teacher.model!r}; set --config.teacher.model={run_config.model.name} or "
            "point config.teacher.workdir at the intended teacher"
        )
    return load_frozen(workdir, run_config, num_classes, image_shape, mesh)


def init_from_run(state, config, num_classes: int, image_shape: tuple):
    """`state` (a `networks.TrainState`) with a finished run's weights; the classifier is
    re-initialised for a method that re-trains it (cRT)."""
    workdir = config.init.workdir
    run_config, run_task = read_run_info(workdir)
    check_compatible(
        "the init run", workdir, run_config, run_task, config, num_classes, image_shape
    )
    current = {"params": state.params, "batch_stats": state.batch_stats}
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), current
    )
    variables, step = restore(workdir, target)
    params = dict(variables["params"])
    if methods.needs_of(config).frozen_backbone:
        params["classifier"] = state.params["classifier"]  # fresh classifier to re-train
    logging.info("initialised from %s (step %d)", workdir, step)
    return state.replace(
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=state.tx.init(params),
    )
