"""Stage 1 of a distillation job: the teachers' configs, where they live, and training or
loading them."""

from __future__ import annotations

import os

import ml_collections
from absl import logging

from ltkd_jax import data, methods
from ltkd_jax.config import defaults
from ltkd_jax.errors import UserError
from ltkd_jax.models import cpu_ops
from ltkd_jax.runs import finished, rundir
from ltkd_jax.training import networks, trainer

# Fields about how a job runs, not what it learns: a teacher runs as its student does.
SHARED_RUN_FIELDS = (
    "batch_size",
    "eval_batch_size",
    "eval_every_epochs",
    "max_steps_per_epoch",
    "log_every_steps",
    "scan_steps",
    "num_devices",
    "progress_bar",
    "keep_checkpoints",
    "resume_overrides",  # a teacher resumed after a non-finite loss takes the lower rate too
)


def _copy(section: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(section.to_dict())


def teacher_config(config: ml_collections.ConfigDict, index: int) -> ml_collections.ConfigDict:
    """Stage 1: teacher `index` of a distillation config, built from a fresh CE config.

    What a teacher takes from the student's config, and nothing else: the architecture and
    head of `config.teacher`, its number of epochs, the student's data (with instance
    sampling) and optimiser (teacher and student share the recipe, as in the BKD code), the
    model's compute settings, and the fields of `SHARED_RUN_FIELDS`. Teacher k trains with
    `defaults.teacher_seed(config.seed, k)`, so no teacher shares the student's initial
    weights, sampler order or augmentation stream. The last
    `config.teacher.color_jitter_teachers` teachers add colour jitter + grayscale: CBD_ENS's
    vanilla and data-aug teacher pairs are teachers 0-1 and 2-3, four distinct seeds.
    """
    t = defaults.base_config("ce")
    t.seed = defaults.teacher_seed(config.seed, index)
    t.num_epochs = config.teacher.num_epochs
    for field in SHARED_RUN_FIELDS:
        t[field] = config[field]
    t.data = _copy(config.data)
    t.data.sampler = "instance"
    t.data.color_jitter = index >= config.teacher.count - config.teacher.color_jitter_teachers
    t.optim = _copy(config.optim)
    t.model.name = config.teacher.model
    t.model.head = config.teacher.head
    for field in ("dtype", "cpu_kernels", "zero_init_residual", "weight_init"):
        t.model[field] = config.model[field]
    return defaults.lock(t)


def teacher_workdirs(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
    """Where the teachers are: config.teacher.workdir, or WORKDIR/teacher[_k] to train."""
    count = methods.num_teachers(config)
    if config.teacher.workdir:
        dirs = [d.strip() for d in config.teacher.workdir.split(",") if d.strip()]
        if len(dirs) != count:
            raise UserError(
                f"config.method={config.method!r} needs {count} teacher(s) but "
                f"config.teacher.workdir names {len(dirs)}"
            )
        return dirs
    if count == 1:
        return [os.path.join(workdir, "teacher")]
    return [os.path.join(workdir, f"teacher_{k}") for k in range(count)]


def prepare_teachers(
    config: ml_collections.ConfigDict, workdir: str, task: data.TaskSplits, mesh
) -> tuple[tuple[networks.Teacher, ...], dict[str, dict | None]]:
    """The method's frozen teachers, trained first (stage 1) when config.teacher.workdir is
    empty, and {teacher workdir: its final test counts} of the teachers trained by this call
    (None for one that was already complete)."""
    dirs = teacher_workdirs(config, workdir)
    trained = {}
    if dirs and not config.teacher.workdir:
        for k, teacher_dir in enumerate(dirs):
            logging.info("stage 1: teacher %d of %d in %s", k + 1, len(dirs), teacher_dir)
            with rundir.log_to_file(teacher_dir):  # its own run.log, beside the job's
                config_k = teacher_config(config, k)
                result = trainer.train_and_evaluate(config_k, teacher_dir, task=task)
            trained[teacher_dir] = result.test_counts
    teachers = tuple(finished.load_teacher(config, d, task, mesh) for d in dirs)
    # The student's compute path, whatever the teacher run used: folded BatchNorm with the
    # CPU kernels, Flax's own layers without them (as on a GPU).
    if cpu_ops.cpu_kernels_enabled(networks.cpu_kernels(config)):
        return tuple(networks.fold_teacher(t) for t in teachers), trained
    return tuple(t.replace(model=t.model.with_ops("xla")) for t in teachers), trained
