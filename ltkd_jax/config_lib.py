"""Shared config defaults and validation, imported by the files under `configs/`.

Every experiment config starts from `base_config()` and changes a few fields, so the
full set of knobs is documented once, here. `validate_config` runs before any data is
read or any program compiled: a wrong value stops the run with a message that names the
field and the fix.
"""

from __future__ import annotations

import inspect
import json
import os
import re

import ml_collections
from ml_collections import config_dict

from ltkd_jax import methods, models, optim, posthoc
from ltkd_jax.data import augment, image_builders, longtail, sampling, sources, task
from ltkd_jax.errors import UserError
from ltkd_jax.methods import base as method_base
from ltkd_jax.models import cpu_ops


def base_config(method: str = "ce") -> ml_collections.ConfigDict:
    """The BKD/LDAM-DRW CIFAR recipe (docs/recipes.md): ResNet-32, 200 epochs, batch 128,
    running `method` with its own defaults in `config.loss`. Every field is documented
    here or in the section builders below; `--print_config` shows the comments."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # The training method (ltkd_jax/methods/) or post-hoc correction; its hyper-parameters
    # are config.loss.
    c.method = method
    _add_data(c)
    _add_model(c)
    # The method's own hyper-parameters: exactly the fields its module declares
    # (ltkd_jax/methods/<method>.py), each with its default; --print_config lists them.
    c.loss = loss_section(method)
    _add_teacher_and_init(c)
    _add_optim(c)
    _add_run(c)
    return c


def _add_data(c: ml_collections.ConfigDict) -> None:
    """config.data: which data, which long-tailed subset, how it is fed and grouped."""
    c.data = ml_collections.ConfigDict()
    c.data.name = "cifar100"
    # Where prepared tfds data lives; empty means ~/tensorflow_datasets.
    c.data.data_dir = ""
    # Local zip of the dataset ({train,test}/<class>/<image>); empty means download.
    # For 'folder' the user's image tree (folder or zip of <split>/<class>/<image>); for
    # imagenet_lt / places_lt / inat2018 the image root the list files are relative to.
    c.data.archive = ""
    c.data.root = c.data.get_ref("archive")  # alias: --config.data.root=/path sets archive
    # Folder holding the benchmark list files (ImageNet_LT_train.txt, ...); empty = the root.
    c.data.list_dir = ""
    # Side of the square images the model sees; 0 = 224 (ImageNet-style datasets) or, for
    # folders, the typical shorter side of the images if smaller. Ignored by cifar / digits.
    c.data.image_size = 0
    # auto | yes | no: decode the whole dataset into RAM (resized to image_size) or read and
    # decode per example in the input workers; auto = RAM when it needs <= 2 GiB.
    c.data.in_memory = "auto"
    # Images that cannot be decoded during preparation: error (list them, write nothing) or
    # skip (log each path and leave it out).
    c.data.on_corrupt = "error"
    # The split evaluated as "test"; empty = the dataset's (test, or iNat's validation).
    c.data.eval_split = ""
    # Fraction of each training class held out (seeded, stratified) as a validation split
    # that selects the best checkpoint, when the data has no val/ split; 0 = none (the
    # benchmarks: best is then chosen on test, as in their literature).
    c.data.val_fraction = 0.0
    # Smallest crop area of the 'imagenet' random-resized crop: 0.08 torchvision, 0.05 CBD.
    c.data.crop_min_area = 0.08
    c.data.imbalance_factor = 100.0
    c.data.profile = "exp"
    c.data.lt_seed = 0  # np.random.seed(0) picks the kept images, as LDAM-DRW (docs/data.md)
    c.data.sampler = "instance"
    c.data.augment = "cifar"
    # After the geometric augmentation: SimCLR v2 colour jitter (s = 1, p = 0.8) + random
    # grayscale (p = 0.2), as CBD_ENS's data-aug teachers (docs/data.md#colour-jitter).
    c.data.color_jitter = False
    c.data.num_workers = 0
    # In-RAM splits (CIFAR, digits, folders that fit) live on the devices and a whole chunk
    # of steps (gather, crop/flip, step) runs in one jitted call; False feeds every batch
    # from the host through grain, as record splits and colour jitter always do.
    c.data.device_resident = True
    # Mean/std normalisation of the input (dataset_stats); False feeds pixels in [0, 1],
    # as CBD does (docs/recipes.md#cbd).
    c.data.normalize = True
    # Shot groups by training count (docs/evaluation.md#shot-groups): many > 100, few < 20.
    c.data.many_threshold = 100
    c.data.few_threshold = 20
    # How classes are grouped for the many / medium / few report: shot (the thresholds
    # above, the LDAM / decoupling protocol) | tail33 (top 33% / next 34% / bottom 33% of
    # classes by training count, as LTKD reports its "tail").
    c.data.eval_groups = "shot"


def _add_model(c: ml_collections.ConfigDict) -> None:
    """config.model: the student network."""
    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet32"
    c.model.head = "linear"
    c.model.dtype = "float32"  # compute dtype; parameters stay float32
    # CPU fast paths (models/cpu_ops.py: GEMM weight-gradient convs and BatchNorm, BN folded
    # into frozen teachers, no YNNPACK fusions): auto = on when JAX runs on the CPU.
    c.model.cpu_kernels = "auto"
    # ImageNet-style ResNets: start the last BatchNorm gamma of every block at 0 (CBD's code).
    c.model.zero_init_residual = False


def _add_teacher_and_init(c: ml_collections.ConfigDict) -> None:
    """config.teacher (a distillation method's frozen teachers) and config.init."""
    # The frozen teacher(s) of a distillation method.
    c.teacher = ml_collections.ConfigDict()
    # A finished teacher run's workdir (comma-separated for an ensemble). Empty: the run
    # first trains its teacher(s) into WORKDIR/teacher (WORKDIR/teacher_<k> for several).
    c.teacher.workdir = ""
    c.teacher.model = "resnet32"
    c.teacher.head = "linear"
    c.teacher.num_epochs = 200
    # CBD ensembles: how many teachers; teacher k trains with seed + 1000 * (k + 1).
    c.teacher.count = 1
    # How many of an ensemble's teachers (the last ones) train with colour jitter + grayscale
    # (data.color_jitter), as the official CBD_ENS data-aug teachers.
    c.teacher.color_jitter_teachers = 0

    # A finished run whose weights start this one (cRT, tau-norm, post-hoc adjustment).
    c.init = ml_collections.ConfigDict()
    c.init.workdir = ""


def _add_optim(c: ml_collections.ConfigDict) -> None:
    """config.optim: SGD with momentum, coupled weight decay, the LR schedule."""
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 0.1
    c.optim.momentum = 0.9
    c.optim.nesterov = False
    # coupled L2 on every parameter, BN included (docs/recipes.md#optimiser)
    c.optim.weight_decay = 2e-4
    c.optim.schedule = "step"
    c.optim.warmup_epochs = 5
    c.optim.decay_epochs = (160, 180)
    c.optim.decay_factor = 0.01  # two x0.01 drops: 1e-3 at 160, 1e-5 at 180


def _add_run(c: ml_collections.ConfigDict) -> None:
    """How the run goes: batch sizes, epochs, logging, chunks, devices, checkpoints."""
    c.batch_size = 128  # global, over all devices and processes
    c.num_epochs = 200
    c.eval_batch_size = 100
    c.eval_every_epochs = 1
    # > 0 caps the steps of every epoch: smoke runs of the real recipe on a CPU.
    c.max_steps_per_epoch = 0
    c.log_every_steps = 50
    # Steps per jitted call on the device-resident path; 0 = a whole epoch. Smaller chunks
    # advance the progress bar more often, at one host round trip each.
    c.scan_steps = 0
    # How the device-resident path runs a chunk: scan (one lax.scan) | steps (one jitted
    # call per step, the batch still built on the device) | auto = scan on accelerators,
    # steps on the CPU, where XLA runs a scanned step ~3x slower.
    c.device_loop = "auto"
    c.num_devices = 0  # 0 = every device JAX sees; n = the first n (a data-parallel mesh)
    c.progress_bar = True
    c.keep_checkpoints = 2  # the latest N are kept, plus the best by top-1


TEACHER_SEED_STRIDE = 1000


def teacher_seed(seed: int, index: int) -> int:
    """The seed of stage-1 teacher `index` of a run with seed `seed`: seed + 1000 * (index + 1).

    Distinct from the student's seed and from every other teacher's; with seeds below 1000
    (as in a table over seeds 0, 1, 2) no teacher seed equals any student seed either.
    """
    return seed + TEACHER_SEED_STRIDE * (index + 1)


def loss_section(method: str) -> ml_collections.ConfigDict:
    """The `config.loss` section of `method` at its defaults; empty for a post-hoc correction
    (nothing is trained). An unknown name gets an empty section: validate_config reports it."""
    if method in methods.METHODS:
        return methods.default_config(method)
    return ml_collections.ConfigDict()


def set_method(config: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
    """Switches an unlocked config to `method`, with that method's default `config.loss`."""
    config.method = method
    config.loss = loss_section(method)
    return config


def _comments_in(fn, prefix: str = "") -> dict[str, str]:
    """'prefix + field' -> the comment of each `c.<field> = ...` line in `fn`'s source (the
    comment lines above it and the one after it)."""
    comments, pending = {}, []
    for line in inspect.getsource(fn).splitlines():
        text = line.strip()
        if text.startswith("#"):
            pending.append(text.lstrip("#").strip())
            continue
        match = re.match(r"c\.([\w.]+) = (.*)", text)
        if match:
            inline = match.group(2).partition("  # ")[2]
            comments[prefix + match.group(1)] = " ".join([*pending, inline]).strip()
        pending = []
    return comments


def field_comments(method: str | None = None) -> dict[str, str]:
    """'section.field' -> its comment: `base_config`'s, and the `loss.*` fields of `method`
    from its module's config function."""
    comments = {}
    for section in (
        base_config,
        _add_data,
        _add_model,
        _add_teacher_and_init,
        _add_optim,
        _add_run,
    ):
        comments.update(_comments_in(section))
    if method in methods.METHODS:
        comments.update(_comments_in(method_base.add_class_weighting, "loss."))
        comments.update(_comments_in(methods.get(method).config, "loss."))
    return comments


def describe_config(config: ml_collections.ConfigDict) -> str:
    """Every field as `name = value  # comment`, in the order `base_config` documents them."""
    comments = field_comments(config.method)
    lines = []

    def walk(node, prefix):
        for key, value in node.items():
            name = prefix + key
            if isinstance(value, ml_collections.ConfigDict):
                lines.append(
                    f"\n[{name}]" + (f"  # {comments[name]}" if comments.get(name) else "")
                )
                walk(value, name + ".")
            else:
                note = comments.get(name, "")
                lines.append(f"{name} = {value!r}" + (f"  # {note}" if note else ""))

    walk(config, "")
    return "\n".join(lines).strip()


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


def _check_names(config: ml_collections.ConfigDict) -> list[str]:
    """Every field whose value must be one of a list of names."""
    d, m = config.data, config.model
    checks = [
        ("data.name", d.name, sources.DATASETS),
        ("data.profile", d.profile, longtail.PROFILES),
        ("data.sampler", d.sampler, sampling.SAMPLERS),
        ("data.augment", d.augment, augment.AUGMENTS),
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
            "config_lib.base_config(method) / config_lib.set_method"
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


def _trains_teachers(config: ml_collections.ConfigDict) -> bool:
    if config.method not in methods.METHODS or config.teacher.workdir:
        return False
    return methods.num_teachers(config) > 0


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
        errors.append(
            f"config.data.archive={config.data.archive!r} does not exist; pass the path of the "
            "dataset zip, e.g. --config.data.archive=../shared/data/cifar100-png.zip, or leave "
            "it empty to download"
        )
    errors += _check_method(config)
    errors += _check_numbers(config, num_devices)
    errors += _check_warmup(config, _trains_teachers(config))
    if errors:
        raise UserError("invalid config:\n  - " + "\n  - ".join(errors))


def upgrade_saved_config(saved: dict) -> dict:
    """A run directory's config.json as this version writes it.

    Runs written before every method owned its `config.loss` section kept one shared section
    (unset fields None, meaning "the loss function's default") and `model.projection_dim`.
    The section becomes the method's own fields, None replaced by the default, which is the
    value the old loss used; the projection width is now derived from the method.
    """
    out = json.loads(json.dumps(saved))
    out.get("model", {}).pop("projection_dim", None)
    method, old = out.get("method"), out.get("loss")
    if method in methods.METHODS and isinstance(old, dict):
        defaults = methods.default_config(method).to_dict()
        out["loss"] = {k: v if old.get(k) is None else old[k] for k, v in defaults.items()}
    return out
