"""Config checks that run before any data is read or any program compiled: a wrong value
stops the run with one message listing every invalid field, each with its fix. Every list
of names is the implementing module's own."""

from __future__ import annotations

import os

import ml_collections

from ltkd_jax import methods, models
from ltkd_jax.config import defaults
from ltkd_jax.data import cifar, image_index, task
from ltkd_jax.errors import UserError
from ltkd_jax.methods import base as method_base


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


def _check_folder_index(config: ml_collections.ConfigDict) -> list[str]:
    """What the folder's file index tells before any image is decoded: empty class folders
    under train/ and a batch larger than train/ (the long-tailed cut and a val_fraction can
    only shrink it; the trainer checks the exact count)."""
    root = os.path.expanduser(config.data.archive)
    if config.data.name != "folder" or not root or not os.path.exists(root):
        return []  # an absent root is reported where the data is read
    store = image_index.ImageStore(root)
    try:
        index = image_index.folder_index(store.list_files(), store.list_dirs())
        where = f"under {store.root}/train"
        task.check_batch_fits(config.batch_size, len(index.splits["train"]), where)
    except UserError as e:
        return [str(e)]
    return []


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
    init.workdir, which must be finished runs not in use (`finished.check_finished`). The
    command line checks them before any data is read or any file written (validate_config
    does not: configs are validated before a user passes paths)."""
    from ltkd_jax.runs import finished  # reads checkpoints: imported when paths are checked

    errors = []
    if config.data.name == "folder" and not config.data.archive:
        errors.append(
            "config.data.root is empty: dataset 'folder' reads your image tree from there; pass "
            "--config.data.root=/path/to/tree (<split>/<class>/<image>, a folder or a zip)"
        )
    errors += _check_folder_index(config)
    for field, what, section in finished.INPUT_RUNS:
        for path in finished.input_workdirs(config, field):
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
            elif not config[section].allow_unfinished:
                try:
                    finished.check_finished(path, what, section, allow=False)
                except UserError as e:
                    errors.append(f"config.{field}: {e}")
    if errors:
        raise UserError("invalid config:\n  - " + "\n  - ".join(errors))


def _value(config: ml_collections.ConfigDict, field: str):
    section, _, name = field.rpartition(".")
    return (config[section] if section else config)[name]


def _check_names(config: ml_collections.ConfigDict) -> list[str]:
    """The fields with a list of names that every run reads (the teacher's are checked when
    the method has one, the loss's by the method)."""
    return [
        error
        for field, names in defaults.field_choices().items()
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


def _check_optim(o: ml_collections.ConfigDict) -> list[str]:
    """The optimiser's numbers (training/optim.py): a negative decay or a momentum of 1 or
    more trains, but not as any recipe means it to."""
    errors = []
    if o.lr <= 0:
        errors.append(f"config.optim.lr={o.lr} must be > 0")
    if o.weight_decay < 0:
        errors.append(
            f"config.optim.weight_decay={o.weight_decay} must be >= 0 (0 = none; the CIFAR "
            "recipe uses 2e-4)"
        )
    if not 0 <= o.momentum < 1:
        errors.append(f"config.optim.momentum={o.momentum} must be in [0, 1) (0 = plain SGD)")
    if o.decay_factor <= 0:
        errors.append(f"config.optim.decay_factor={o.decay_factor} must be > 0, e.g. 0.1")
    if o.warmup_epochs < 0:
        errors.append(f"config.optim.warmup_epochs={o.warmup_epochs} must be >= 0 (0 = none)")
    if any(e < 0 for e in o.decay_epochs):
        errors.append(f"config.optim.decay_epochs={tuple(o.decay_epochs)} must be epochs >= 0")
    return errors


def _check_counts(config: ml_collections.ConfigDict) -> list[str]:
    """Fields that count or seed something, each with its lower bound."""
    d = config.data
    bounds = [
        ("batch_size", config.batch_size, 1, ""),
        ("eval_batch_size", config.eval_batch_size, 1, ""),
        ("num_epochs", config.num_epochs, 1, ""),
        ("eval_every_epochs", config.eval_every_epochs, 1, ""),
        ("log_every_steps", config.log_every_steps, 1, ""),
        ("keep_checkpoints", config.keep_checkpoints, 1, " (a resume restores the latest)"),
        ("max_steps_per_epoch", config.max_steps_per_epoch, 0, " (0 = no cap)"),
        ("scan_steps", config.scan_steps, 0, " (0 = a whole epoch)"),
        ("num_devices", config.num_devices, 0, " (0 = all devices)"),
        ("seed", config.seed, 0, " (numpy seeds are non-negative)"),
        ("data.lt_seed", d.lt_seed, 0, " (numpy seeds are non-negative)"),
        ("data.num_workers", d.num_workers, 0, " (0 = in the main process)"),
        ("data.few_threshold", d.few_threshold, 0, ""),
        ("teacher.count", config.teacher.count, 1, ""),
    ]
    if _trains_teachers(config):  # stage 1 trains them for this many epochs
        bounds.append(("teacher.num_epochs", config.teacher.num_epochs, 1, ""))
    errors = [
        f"config.{field}={value} must be >= {low}{note}"
        for field, value, low, note in bounds
        if value < low
    ]
    if d.few_threshold > d.many_threshold:
        errors.append(
            f"config.data.few_threshold={d.few_threshold} is above config.data.many_threshold="
            f"{d.many_threshold}; few < few_threshold <= many_threshold < many (e.g. 20, 100)"
        )
    if not 0 <= d.val_fraction < 1:
        errors.append(
            f"config.data.val_fraction={d.val_fraction} must be in [0, 1), e.g. 0.1 (0 = none)"
        )
    unknown = sorted(set(defaults.override_names(config)) - defaults.RESUME_OVERRIDABLE)
    if unknown:
        errors.append(
            f"config.resume_overrides names {unknown}; a resume may override only "
            f"{sorted(defaults.RESUME_OVERRIDABLE)} (config/defaults.py RESUME_OVERRIDABLE)"
        )
    return errors


def _check_numbers(config: ml_collections.ConfigDict) -> list[str]:
    """Counts and sizes of the run."""
    errors = _check_counts(config) + _check_optim(config.optim)
    d = config.data
    if d.imbalance_factor < 1:
        errors.append(
            f"config.data.imbalance_factor={d.imbalance_factor} must be >= 1 (1 = balanced, 100 = "
            "head class 100x the tail); pass e.g. --config.data.imbalance_factor=100"
        )
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
        errors.append(_missing_data_path(config.data))
    errors += _check_method(config)
    errors += _check_numbers(config)
    if errors:
        raise UserError("invalid config:\n  - " + "\n  - ".join(errors))
