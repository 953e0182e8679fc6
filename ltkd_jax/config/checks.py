"""Config checks that run before any data is read or any program compiled: a wrong value
stops the run with one message listing every invalid field, each with its fix. Every list
of names is the implementing module's own."""

from __future__ import annotations

import os

import ml_collections

from ltkd_jax import methods, models
from ltkd_jax.data import augment, cifar, image_builders, longtail, sampling, sources, task
from ltkd_jax.errors import UserError
from ltkd_jax.methods import base as method_base
from ltkd_jax.methods import posthoc
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


def _missing_data_path(d: ml_collections.ConfigDict) -> str:
    """The error for a data path that does not exist, in the words of the dataset: the
    folder's `data.root`, CIFAR's `data.archive` zip, a benchmark's image root."""
    if d.name in cifar.ARCHIVE_NAMES:
        return (
            f"config.data.archive={d.archive!r} does not exist; pass the path of the {d.name} "
            f"zip, e.g. --config.data.archive=../shared/data/{cifar.ARCHIVE_NAMES[d.name]}, or "
            f"leave it empty to download {d.name}"
        )
    if d.name == "folder":
        return (
            f"config.data.root={d.root!r} does not exist; pass your image folder or zip "
            "(<split>/<class>/<image>): --config.data.root=/path/to/mydata, or root= in the "
            "folder configs' argument"
        )
    return (
        f"config.data.root={d.root!r} does not exist; pass the {d.name} image root: "
        "--config.data.root=/path/to/images"
    )


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


def _check_names(config: ml_collections.ConfigDict) -> list[str]:
    """Every field whose value must be one of a list of names."""
    d, m = config.data, config.model
    checks = [
        ("data.name", d.name, sources.DATASETS),
        ("data.profile", d.profile, longtail.PROFILES),
        ("data.sampler", d.sampler, sampling.SAMPLERS),
        ("data.augment", d.augment, augment.AUGMENT_CHOICES),
        ("data.in_memory", d.in_memory, sources.IN_MEMORY),
        ("data.on_corrupt", d.on_corrupt, image_builders.ON_CORRUPT),
        ("data.eval_groups", d.eval_groups, task.EVAL_GROUPS),
        ("model.name", m.name, tuple(models.MODELS)),
        ("model.head", m.head, models.HEADS),
        ("model.dtype", m.dtype, tuple(models.DTYPES)),
        ("model.cpu_kernels", m.cpu_kernels, cpu_ops.CPU_KERNELS),
        ("optim.schedule", config.optim.schedule, optim.SCHEDULES),
        ("device_loop", config.device_loop, ("auto", "scan", "steps")),
        ("method", config.method, (*methods.NAMES, *posthoc.POSTHOC)),
    ]
    return [e for field, value, names in checks for e in _check_choice(config, field, value, names)]


def _check_method(config: ml_collections.ConfigDict) -> list[str]:
    """The method's own section and checks (ltkd_jax/methods/<method>.py), and what it needs
    of the model and the run."""
    if config.method in posthoc.POSTHOC:
        if not config.init.workdir:
            return [
                f"config.method={config.method!r} corrects a finished run; set "
                "--config.init.workdir to that run's workdir"
            ]
        return []
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
    errors = methods.get(config.method).validate(config)
    needs = methods.needs_of(config)
    if needs.head and config.model.head != needs.head:
        errors.append(
            f"config.method={config.method!r} needs the {needs.head!r} classifier head; "
            f"set --config.model.head={needs.head}"
        )
    if needs.frozen_backbone and not config.init.workdir:
        errors.append(
            f"config.method={config.method!r} re-trains the classifier of a finished "
            "run; set --config.init.workdir to that run's workdir"
        )
    if methods.num_teachers(config) > 0:
        errors += _check_choice(config, "teacher.model", config.teacher.model, tuple(models.MODELS))
    return errors


def _check_numbers(config: ml_collections.ConfigDict, num_devices: int | None) -> list[str]:
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
    if num_devices and config.batch_size % num_devices:
        errors.append(
            f"config.batch_size={config.batch_size} is not divisible by the {num_devices} devices "
            f"of the mesh; pick a multiple of {num_devices} or set --config.num_devices"
        )
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


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises UserError listing every invalid field, each with the fix. Runs before any data
    or teacher is read, so a typo never waits for a stage-1 teacher to finish."""
    errors = _check_names(config) + _check_data_sources(config.data)
    if config.data.archive and not os.path.exists(os.path.expanduser(config.data.archive)):
        errors.append(_missing_data_path(config.data))
    errors += _check_method(config)
    errors += _check_numbers(config, num_devices)
    if errors:
        raise UserError("invalid config:\n  - " + "\n  - ".join(errors))
