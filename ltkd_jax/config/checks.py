"""Config checks that run before any data is read or any program compiled: a wrong value
stops the run with one message listing every invalid field, each with its fix. Every list
of names is the implementing module's own."""

from __future__ import annotations

import os

import ml_collections

from ltkd_jax import methods, models
from ltkd_jax.data import augment, image_builders, longtail, sampling, sources, task
from ltkd_jax.errors import UserError
from ltkd_jax.methods import base as method_base
from ltkd_jax.models import cpu_ops
from ltkd_jax.training import optim


def _check_choice(config, field: str, value, choices) -> list[str]:
    return method_base.check_choice(field, value, choices)


def _check_data_sources(d: ml_collections.ConfigDict) -> list[str]:
    """Checks of the image-folder / large-scale data fields."""
    errors = []
    # A missing data.root for 'folder' / 'places_lt' is reported by load_splits: configs
    # are validated (tests/test_configs.py) before a user passes the path.
    if d.list_dir and not os.path.isdir(os.path.expanduser(d.list_dir)):
        errors.append(
            f"config.data.list_dir={d.list_dir!r} is not a directory; pass the folder holding "
            "the benchmark list files (e.g. ImageNet_LT_train.txt)"
        )
    if d.image_size < 0:
        errors.append(f"config.data.image_size={d.image_size} must be >= 0 (0 = default)")
    if not 0 < d.crop_min_area <= 1:
        errors.append(
            f"config.data.crop_min_area={d.crop_min_area} must be in (0, 1]; e.g. 0.08 "
            "(torchvision) or 0.05 (CBD)"
        )
    return errors


def check_run_paths(config: ml_collections.ConfigDict) -> None:
    """The paths a user must pass: data.root of a 'folder' dataset, and teacher.workdir /
    init.workdir, which must be finished runs. The command line checks them before any data
    is read (validate_config does not: configs are validated before a user passes paths)."""
    errors = []
    if config.data.name == "folder" and not config.data.archive:
        errors.append(
            "config.data.root is empty: dataset 'folder' reads your image tree from there; pass "
            "--config.data.root=/path/to/tree (<split>/<class>/<image>, a folder or a zip)"
        )
    for field in ("teacher.workdir", "init.workdir"):
        section, name = field.split(".")
        for path in (p.strip() for p in config[section][name].split(",") if p.strip()):
            if "://" in path:
                continue  # object stores: reported when read
            missing = [
                f
                for f in ("config.json", "task.json", "checkpoints")
                if not os.path.exists(os.path.join(os.path.expanduser(path), f))
            ]
            if not os.path.isdir(os.path.expanduser(path)):
                errors.append(
                    f"config.{field}: {path} does not exist; pass the --workdir of a finished run"
                )
            elif missing:
                errors.append(
                    f"config.{field}: {path} is not a finished ltkd_jax run (no {missing[0]}); "
                    "pass the --workdir of a finished run"
                )
    if errors:
        raise UserError("invalid config:\n  - " + "\n  - ".join(errors))


def _check_warmup(config: ml_collections.ConfigDict, trains_teachers: bool) -> list[str]:
    """A cosine schedule needs epochs after its warm-up (optax: decay_steps > 0)."""
    if config.optim.schedule != "cosine":
        return []  # the step schedule simply stays in warm-up
    runs = [("num_epochs", config.num_epochs)]
    if trains_teachers:
        runs.append(("teacher.num_epochs", config.teacher.num_epochs))
    return [
        f"config.{field}={epochs} is not longer than config.optim.warmup_epochs="
        f"{config.optim.warmup_epochs}, so the cosine decay has no steps; raise {field} or "
        "lower --config.optim.warmup_epochs"
        for field, epochs in runs
        if epochs <= config.optim.warmup_epochs
    ]


def field_choices() -> dict[str, tuple]:
    """Every config field whose value must be one of a list of names, with that list: the
    implementing module's own (`--print_config` shows them too)."""
    return {
        "method": tuple(methods.NAMES),
        "data.name": tuple(sources.DATASETS),
        "data.profile": tuple(longtail.PROFILES),
        "data.sampler": tuple(sampling.SAMPLERS),
        "data.augment": tuple(augment.AUGMENTS),
        "data.norm_stats": tuple(augment.NORM_STATS_CHOICES),
        "data.in_memory": tuple(sources.IN_MEMORY),
        "data.on_corrupt": tuple(image_builders.ON_CORRUPT),
        "data.eval_groups": tuple(task.EVAL_GROUPS),
        "model.name": tuple(models.MODELS),
        "model.head": tuple(models.HEADS),
        "model.weight_init": tuple(models.WEIGHT_INITS),
        "model.dtype": tuple(models.DTYPES),
        "model.cpu_kernels": tuple(cpu_ops.CPU_KERNELS),
        "optim.schedule": tuple(optim.SCHEDULES),
        "teacher.model": tuple(models.MODELS),
        "teacher.head": tuple(models.HEADS),
        "loss.class_weighting": tuple(method_base.WEIGHTINGS),
    }


def _value(config: ml_collections.ConfigDict, field: str):
    section, _, name = field.rpartition(".")
    return (config[section] if section else config)[name]


def _check_names(config: ml_collections.ConfigDict) -> list[str]:
    """The fields with a list of names that every run reads (the teacher's are checked when
    the method has one, the loss's by the method)."""
    return [
        error
        for field, names in field_choices().items()
        if not field.startswith(("teacher.", "loss."))
        for error in _check_choice(config, field, _value(config, field), names)
    ]


def _check_method(config: ml_collections.ConfigDict) -> list[str]:
    """The method's own section and checks (ltkd_jax/methods/<method>.py), and what it needs
    of the model and the run."""
    if config.method not in methods.METHODS:
        return []  # reported by _check_names
    expected, given = set(methods.default_config(config.method)), set(config.loss)
    if expected != given:
        return [
            f"config.loss has the fields {sorted(given)}, but method {config.method!r} takes "
            f"{sorted(expected)}: the method was changed after the config was built. Start "
            f"from the method's config (configs/{config.method}_cifar.py) or build it with "
            "ltkd_jax.config.defaults.base_config(method) / set_method"
        ]
    spec = methods.get(config.method)
    errors = spec.validate(config)
    if spec.head and config.model.head != spec.head:
        errors.append(
            f"config.method={config.method!r} needs the {spec.head!r} classifier head; "
            f"set --config.model.head={spec.head}"
        )
    if methods.needs_of(config).init_run and not config.init.workdir:
        errors.append(
            f"config.method={config.method!r} starts from a finished run; "
            "set --config.init.workdir to that run's workdir"
        )
    if methods.num_teachers(config) > 0:
        errors += _check_choice(config, "teacher.model", config.teacher.model, tuple(models.MODELS))
    return errors


def _trains_teachers(config: ml_collections.ConfigDict) -> bool:
    if config.method not in methods.METHODS or config.teacher.workdir:
        return False
    return methods.num_teachers(config) > 0


def _check_numbers(config: ml_collections.ConfigDict) -> list[str]:
    """Counts and sizes of the run."""
    errors = []
    d = config.data
    if d.imbalance_factor < 1:
        errors.append(
            f"config.data.imbalance_factor={d.imbalance_factor} must be >= 1 (1 = balanced, 100 = "
            "head class 100x the tail); pass e.g. --config.data.imbalance_factor=100"
        )
    if config.scan_steps < 0:
        errors.append(f"config.scan_steps={config.scan_steps} must be >= 0 (0 = a whole epoch)")
    for field in ("batch_size", "eval_batch_size", "num_epochs", "eval_every_epochs"):
        if config[field] < 1:
            errors.append(f"config.{field}={config[field]} must be a positive integer")
    if config.num_devices < 0:
        errors.append("config.num_devices must be >= 0 (0 = all devices)")
    if config.optim.lr <= 0:
        errors.append(f"config.optim.lr={config.optim.lr} must be > 0")
    if not 0 <= config.teacher.color_jitter_teachers <= config.teacher.count:
        errors.append(
            f"config.teacher.color_jitter_teachers={config.teacher.color_jitter_teachers} must "
            f"be in [0, config.teacher.count={config.teacher.count}]"
        )
    return errors


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises UserError listing every invalid field, each with the fix. Runs before any data
    or teacher is read, so a typo never waits for a stage-1 teacher to finish."""
    errors = _check_names(config) + _check_data_sources(config.data)
    if config.data.archive and not os.path.exists(os.path.expanduser(config.data.archive)):
        errors.append(
            f"config.data.archive={config.data.archive!r} does not exist; pass the path of the "
            "dataset zip, e.g. --config.data.archive=../shared/data/cifar100-png.zip, or leave "
            "it empty to download"
        )
    errors += _check_method(config)
    errors += _check_numbers(config)
    errors += _check_warmup(config, _trains_teachers(config))
    if errors:
        raise UserError("invalid config:\n  - " + "\n  - ".join(errors))
