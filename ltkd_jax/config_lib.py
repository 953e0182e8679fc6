"""Shared config defaults and validation, imported by the files under `configs/`.

Every experiment config starts from `base_config()` and changes a few fields, so the
full set of knobs is documented once, here. `validate_config` runs before any data is
read or any program compiled: a wrong value stops the run with a message that names the
field and the fix.
"""

from __future__ import annotations

import os

import ml_collections
from ml_collections import config_dict

# Known names. Kept here (not imported from the modules that implement them) so a config
# can be checked without importing JAX-heavy modules; tests assert they stay in sync.
DATASETS = ("cifar10", "cifar100", "digits")
PROFILES = ("exp", "step")
SAMPLERS = ("instance", "sqrt", "class_balanced", "progressive")
AUGMENTATIONS = ("cifar", "none")
HEADS = ("linear", "normed", "cosine")
SCHEDULES = ("step", "cosine")
DTYPES = ("float32", "bfloat16")


def base_config() -> ml_collections.ConfigDict:
    """The BKD/LDAM-DRW CIFAR recipe (methods.md 5.3): ResNet-32, 200 epochs, batch 128."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.method = "ce"

    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar100"
    # Where prepared tfds data lives; empty means ~/tensorflow_datasets.
    c.data.data_dir = ""
    # Local zip of the dataset ({train,test}/<class>/<image>); empty means download.
    c.data.archive = ""
    c.data.imbalance_factor = 100.0
    c.data.profile = "exp"
    c.data.lt_seed = 0  # methods.md 2.1: np.random.seed(0) picks the kept images
    c.data.sampler = "instance"
    c.data.augment = "cifar"
    c.data.num_workers = 0
    # Shot groups by training count (methods.md 3): many > 100, few < 20.
    c.data.many_threshold = 100
    c.data.few_threshold = 20

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet32"
    c.model.head = "linear"
    c.model.dtype = "float32"  # compute dtype; parameters stay float32
    c.model.projection_dim = 0  # > 0 adds CBD's Dense+ReLU projection before the head

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 0.1
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    c.optim.weight_decay = 2e-4  # coupled L2 on every parameter, BN included (methods.md 10.13)
    c.optim.schedule = "step"
    c.optim.warmup_epochs = 5
    c.optim.decay_epochs = (160, 180)
    c.optim.decay_factor = 0.01  # two x0.01 drops: 1e-3 at 160, 1e-5 at 180

    c.batch_size = 128  # global, over all devices and processes
    c.num_epochs = 200
    c.eval_batch_size = 100
    c.eval_every_epochs = 1
    # > 0 caps the steps of every epoch: smoke runs of the real recipe on a CPU.
    c.max_steps_per_epoch = 0
    c.log_every_steps = 50
    c.num_devices = 0  # 0 = every device JAX sees; n = the first n (a data-parallel mesh)
    c.progress_bar = True
    c.keep_checkpoints = 2  # the latest N are kept, plus the best by top-1
    return c


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks the config so a typo in a field name fails instead of adding a field."""
    config.lock()
    return config


def parse_arg(arg: str | None, **defaults):
    """Parses 'k=v,k2=v2' (the text after ':' in `--config file.py:arg`) into a ConfigDict.

    Values are converted to the type of the default; unknown keys are an error.
    """
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    for item in arg.split(","):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in defaults:
            raise ValueError(
                f"config argument {item!r} not understood; expected key=value with key one of "
                f"{sorted(defaults)}"
            )
        default = defaults[key]
        out[key] = type(default)(value) if default is not None else value
    return out


def placeholder(kind):
    """A typed empty field that must be set on the command line."""
    return config_dict.placeholder(kind)


def _check_choice(config, field: str, value, choices) -> list[str]:
    if value in choices:
        return []
    return [f"config.{field}={value!r} is not known; choose one of {list(choices)}"]


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises ValueError listing every invalid field, each with the fix."""
    from ltkd_jax import methods, models  # deferred: keeps config loading light

    errors: list[str] = []
    d = config.data
    errors += _check_choice(config, "data.name", d.name, DATASETS)
    errors += _check_choice(config, "data.profile", d.profile, PROFILES)
    errors += _check_choice(config, "data.sampler", d.sampler, SAMPLERS)
    errors += _check_choice(config, "data.augment", d.augment, AUGMENTATIONS)
    errors += _check_choice(config, "model.name", config.model.name, tuple(models.MODELS))
    errors += _check_choice(config, "model.head", config.model.head, HEADS)
    errors += _check_choice(config, "model.dtype", config.model.dtype, DTYPES)
    errors += _check_choice(config, "optim.schedule", config.optim.schedule, SCHEDULES)
    errors += _check_choice(config, "method", config.method, tuple(methods.METHODS))
    if d.imbalance_factor < 1:
        errors.append(
            f"config.data.imbalance_factor={d.imbalance_factor} must be >= 1 (1 = balanced, 100 = "
            "head class 100x the tail); pass e.g. --config.data.imbalance_factor=100"
        )
    if d.archive and not os.path.exists(os.path.expanduser(d.archive)):
        errors.append(
            f"config.data.archive={d.archive!r} does not exist; pass the path of the dataset zip, "
            "e.g. --config.data.archive=../shared/data/cifar100-png.zip, or leave it empty to "
            "download"
        )
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
    if errors:
        raise ValueError("invalid config:\n  - " + "\n  - ".join(errors))
