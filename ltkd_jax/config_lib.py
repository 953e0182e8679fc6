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
DATASETS = ("cifar10", "cifar100", "digits", "imagenet_lt", "places_lt", "inat2018", "folder")
PROFILES = ("exp", "step")
SAMPLERS = ("instance", "sqrt", "class_balanced", "progressive", "cbd_stream")
AUGMENTATIONS = ("cifar", "imagenet", "none")
IN_MEMORY = ("auto", "yes", "no")
ON_CORRUPT = ("error", "skip")
HEADS = ("linear", "normed", "cosine")
SCHEDULES = ("step", "cosine")
DTYPES = ("float32", "bfloat16")
CPU_KERNELS = ("auto", "on", "off")
EVAL_GROUPS = ("shot", "tail33")


class UserError(ValueError):
    """A mistake in the command line or config: the command line prints its message alone
    (no traceback) and exits 2."""


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
    c.data.lt_seed = 0  # methods.md 2.1: np.random.seed(0) picks the kept images
    c.data.sampler = "instance"
    c.data.augment = "cifar"
    # After the geometric augmentation: SimCLR v2 colour jitter (s = 1, p = 0.8) + random
    # grayscale (p = 0.2), as CBD_ENS's data-aug teachers (methods.md 8.1).
    c.data.color_jitter = False
    c.data.num_workers = 0
    # In-RAM splits (CIFAR, digits, folders that fit) live on the devices and a whole chunk
    # of steps (gather, crop/flip, step) runs in one jitted call; False feeds every batch
    # from the host through grain, as record splits and colour jitter always do.
    c.data.device_resident = True
    # Mean/std normalisation of the input (dataset_stats); False feeds pixels in [0, 1],
    # as CBD does (methods.md 8.3).
    c.data.normalize = True
    # Shot groups by training count (methods.md 3): many > 100, few < 20.
    c.data.many_threshold = 100
    c.data.few_threshold = 20
    # How classes are grouped for the many / medium / few report: shot (the thresholds
    # above, the LDAM / decoupling protocol) | tail33 (top 33% / next 34% / bottom 33% of
    # classes by training count, as LTKD reports its "tail").
    c.data.eval_groups = "shot"

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet32"
    c.model.head = "linear"
    c.model.dtype = "float32"  # compute dtype; parameters stay float32
    c.model.projection_dim = 0  # > 0 adds CBD's Dense+ReLU projection before the head
    # CPU fast paths (models/cpu_ops.py: GEMM weight-gradient convs and BatchNorm, BN folded
    # into frozen teachers, no YNNPACK fusions): auto = on when JAX runs on the CPU.
    c.model.cpu_kernels = "auto"
    # ImageNet-style ResNets: start the last BatchNorm gamma of every block at 0 (CBD's code).
    c.model.zero_init_residual = False

    # Loss hyper-parameters. An empty (None) field means "the method's default" (methods.md);
    # set one to override it, e.g. --config.loss.temperature=4.
    c.loss = ml_collections.ConfigDict()
    c.loss.temperature = placeholder(float)
    c.loss.alpha = placeholder(float)
    c.loss.beta = placeholder(float)
    c.loss.gamma = placeholder(float)
    c.loss.tau = placeholder(float)
    c.loss.lam = placeholder(float)  # TGLS mixing weight (DU-KD)
    c.loss.ce_weight = placeholder(float)
    # Class weights in (the CE term of) cb / focal / kd, and BKD's KD weights:
    # none | reweight (effective number from epoch 0) | drw (from loss.drw_epoch).
    c.loss.class_weighting = "none"
    c.loss.cb_beta = 0.9999
    c.loss.drw_epoch = 160
    c.loss.warmup_epochs = 20  # DKD's linear warm-up of the distillation term
    # LTKD cross-group rebalancing: batch (the paper's batch-level rule) | r1 | r2 | none.
    c.loss.rebalance = "batch"
    # LTKD class groups: tail33 (top 33% / next 34% / bottom 33% of classes by training
    # count, the paper's) | shot (the evaluation groups) | thirds.
    c.loss.groups = "tail33"
    c.loss.prior_placement = "inside"  # DU-KD: inside | outside | teacher (methods.md 6.2)

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
    # (data.color_jitter), methods.md 8.1.
    c.teacher.color_jitter_teachers = 0

    # A finished run whose weights start this one (cRT, tau-norm, post-hoc adjustment).
    c.init = ml_collections.ConfigDict()
    c.init.workdir = ""

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
    return c


TEACHER_SEED_STRIDE = 1000


def teacher_seed(seed: int, index: int) -> int:
    """The seed of stage-1 teacher `index` of a run with seed `seed`: seed + 1000 * (index + 1).

    Distinct from the student's seed and from every other teacher's; with seeds below 1000
    (as in a table over seeds 0, 1, 2) no teacher seed equals any student seed either.
    """
    return seed + TEACHER_SEED_STRIDE * (index + 1)


def field_comments() -> dict[str, str]:
    """'section.field' -> its comment in `base_config` (the lines above it and after it)."""
    import inspect
    import re

    comments, pending = {}, []
    for line in inspect.getsource(base_config).splitlines():
        text = line.strip()
        if text.startswith("#"):
            pending.append(text.lstrip("#").strip())
            continue
        match = re.match(r"c\.([\w.]+) = (.*)", text)
        if match:
            inline = match.group(2).partition("  # ")[2]
            comments[match.group(1)] = " ".join([*pending, inline]).strip()
        pending = []
    return comments


def describe_config(config: ml_collections.ConfigDict) -> str:
    """Every field as `name = value  # comment`, in the order `base_config` documents them."""
    comments = field_comments()
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
    if value in choices:
        return []
    return [f"config.{field}={value!r} is not known; choose one of {list(choices)}"]


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


def validate_config(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
    """Raises ValueError listing every invalid field, each with the fix."""
    from ltkd_jax import methods, models, posthoc  # deferred: keeps config loading light

    errors: list[str] = []
    d = config.data
    errors += _check_choice(config, "data.name", d.name, DATASETS)
    errors += _check_choice(config, "data.profile", d.profile, PROFILES)
    errors += _check_choice(config, "data.sampler", d.sampler, SAMPLERS)
    errors += _check_choice(config, "data.augment", d.augment, AUGMENTATIONS)
    errors += _check_choice(config, "data.in_memory", d.in_memory, IN_MEMORY)
    errors += _check_choice(config, "data.on_corrupt", d.on_corrupt, ON_CORRUPT)
    errors += _check_choice(config, "data.eval_groups", d.eval_groups, EVAL_GROUPS)
    errors += _check_data_sources(d)
    errors += _check_choice(config, "model.name", config.model.name, tuple(models.MODELS))
    errors += _check_choice(config, "model.head", config.model.head, HEADS)
    errors += _check_choice(config, "model.dtype", config.model.dtype, DTYPES)
    errors += _check_choice(config, "model.cpu_kernels", config.model.cpu_kernels, CPU_KERNELS)
    errors += _check_choice(config, "optim.schedule", config.optim.schedule, SCHEDULES)
    errors += _check_choice(config, "method", config.method, (*methods.METHODS, *posthoc.POSTHOC))
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
    errors += _check_choice(config, "device_loop", config.device_loop, ("auto", "scan", "steps"))
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
    if config.method in posthoc.POSTHOC and not config.init.workdir:
        errors.append(
            f"config.method={config.method!r} corrects a finished run; set "
            "--config.init.workdir to that run's workdir"
        )
    if config.method in methods.METHODS:
        try:
            needs = methods.needs_of(config)
        except ValueError as e:
            errors.append(str(e))
        else:
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
    try:
        trains_teachers = methods.num_teachers(config) > 0 and not config.teacher.workdir
    except ValueError:
        trains_teachers = False  # an unknown method, reported above
    errors += _check_warmup(config, trains_teachers)
    if config.optim.lr <= 0:
        errors.append(f"config.optim.lr={config.optim.lr} must be > 0")
    if not 0 <= config.teacher.color_jitter_teachers <= config.teacher.count:
        errors.append(
            f"config.teacher.color_jitter_teachers={config.teacher.color_jitter_teachers} must "
            f"be in [0, config.teacher.count={config.teacher.count}]"
        )
    if errors:
        raise UserError("invalid config:\n  - " + "\n  - ".join(errors))


# Recipes a CIFAR config can follow (the `recipe=` config argument).
RECIPES = ("bkd", "mdistiller")


def bkd_repo_weighting(dataset: str) -> str:
    """The class-weighting rule the BKD repository forces for every loss (train_student.py):
    DRW on CIFAR-10, effective-number re-weighting from epoch 0 on CIFAR-100."""
    return "drw" if dataset == "cifar10" else "reweight"


def cifar_config(
    arg: str | None, method: str, *, bkd_repo_rule: bool = False, **loss
) -> ml_collections.ConfigDict:
    """A CIFAR-LT config for `method`, from the `file.py:k=v,...` argument.

    Arguments: dataset (cifar10 | cifar100), imb (imbalance factor), student and teacher
    (architectures, e.g. teacher=resnet32x4,student=resnet8x4 for methods.md 7.2's
    heterogeneous pairs), teacher_workdir (a finished teacher run; empty = train it first
    into WORKDIR/teacher), recipe (bkd = methods.md 5.3, the default, so every method is
    compared on one recipe; mdistiller = methods.md 7.2). `loss` sets config.loss fields.
    `bkd_repo_rule`: under recipe=bkd, weight the loss by class as the BKD repository does
    for every loss (`bkd_repo_weighting`); other recipes keep config.loss.class_weighting.
    """
    args = parse_arg(
        arg,
        dataset="cifar100",
        imb=100.0,
        student="resnet32",
        teacher="resnet32",
        teacher_workdir="",
        recipe="bkd",
    )
    if args.recipe not in RECIPES:
        raise ValueError(f"recipe={args.recipe!r} is not known; choose one of {list(RECIPES)}")
    c = base_config()
    c.method = method
    c.data.name = args.dataset
    c.data.imbalance_factor = args.imb
    c.model.name = args.student
    c.teacher.model = args.teacher
    c.teacher.workdir = args.teacher_workdir
    for key, value in loss.items():
        c.loss[key] = value
    if bkd_repo_rule and args.recipe == "bkd":
        c.loss.class_weighting = bkd_repo_weighting(args.dataset)
    if args.recipe == "mdistiller":
        # methods.md 7.2: 240 epochs, batch 64, lr 0.05, x0.1 at 150/180/210, wd 5e-4.
        for section in (c, c.teacher):
            section.num_epochs = 240
        c.batch_size = 64
        c.optim.lr, c.optim.weight_decay = 0.05, 5e-4
        c.optim.warmup_epochs, c.optim.decay_epochs, c.optim.decay_factor = 0, (150, 180, 210), 0.1
        c.data.eval_groups = "tail33"  # LTKD's tables report the bottom 33% as "tail"
    return c


def large_scale_config(
    dataset: str, method: str, *, model: str, epochs: int, weight_decay: float = 5e-4
) -> ml_collections.ConfigDict:
    """ImageNet-style recipe (classifier-balancing stage 1, methods.md 4.6 / 5.3).

    224-pixel random-resized crops read from disk by 8 grain workers, bf16 compute with
    float32 parameters and loss, batch 512, SGD 0.9, lr 0.2 cosine to 0 per step. The
    datasets are long-tailed already, so no subset is taken (imbalance factor 1). The
    teacher of a distillation method shares the student's architecture and schedule.
    """
    c = base_config()
    c.method = method
    c.data.name = dataset
    c.data.imbalance_factor = 1.0
    c.data.image_size = 224
    c.data.in_memory = "no"
    c.data.augment = "imagenet"
    c.data.num_workers = 8
    c.model.name = c.teacher.model = model
    c.model.dtype = "bfloat16"  # compute; parameters and the loss stay float32
    c.teacher.num_epochs = c.num_epochs = epochs
    c.batch_size = 512
    c.eval_batch_size = 1000
    c.optim.lr = 0.2
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 0
    c.optim.weight_decay = weight_decay
    c.log_every_steps = 100
    return c


def cbd_large_scale_config(
    dataset: str, *, teachers: int, epochs: int, weight_decay: float
) -> ml_collections.ConfigDict:
    """CBD stage 2 as its official code runs it (methods.md 8.2-8.3).

    `weight_decay` is the official config's value; the effective decay applied is half of it
    (see below). The official code shuffles its example stream with a 1000-example buffer;
    ours shuffles each epoch globally, a deliberate choice: the same class balance per pass
    and no dependence on the order the examples are stored in.

    ResNet-50 with the fixed-sigma cosine head for teachers and student, the class-balancing
    example-stream resampler, (1 - 0.4) CE + 0.4 * 100 * (1 - cos); batch 128, lr
    0.1 * 128 / 256 cosine per step without warm-up, heavy-ball momentum, crop area
    [0.05, 1], pixels in [0, 1] without mean/std normalisation.
    """
    method = "cbd" if teachers == 1 else "cbd_ensemble"
    # The official train.py adds weight_decay * 0.5 * tf.nn.l2_loss(trainable variables) =
    # weight_decay / 4 * sum(theta^2) to the loss: a gradient of weight_decay / 2 * theta on
    # every variable, BatchNorm included. The optimiser's coupled decay adds
    # optim.weight_decay * theta, so it gets half the official config's number.
    c = large_scale_config(
        dataset, method, model="resnet50", epochs=epochs, weight_decay=weight_decay / 2
    )
    c.model.zero_init_residual = True  # the official blocks' bn_2: gamma_initializer='zeros'
    c.loss.alpha, c.loss.beta = 0.4, 100.0
    c.data.crop_min_area = 0.05
    c.data.normalize = False
    c.data.sampler = "cbd_stream"
    c.model.head = c.teacher.head = "cosine"
    c.teacher.count = teachers  # seeds seed + 1000, seed + 2000, ... (train.teacher_seed)
    # methods.md 8.1: CBD_ENS = vanilla_seed1/2 + data_aug_seed1/2 (colour jitter + grayscale).
    c.teacher.color_jitter_teachers = teachers // 2
    c.batch_size = 128
    c.optim.lr = 0.05
    c.optim.nesterov = False
    return c


def folder_config(arg: str | None, method: str) -> ml_collections.ConfigDict:
    """A user's image-folder dataset (`<split>/<class>/<image>`, a folder or a zip).

    Arguments: root (the path; also `--config.data.root`), imb (1 = as it is, > 1 = an
    exponential long-tailed subset), model, augment (imagenet | cifar for <= 64 px images),
    size (0 = automatic), epochs. Recipe: 100 epochs, batch 128, SGD 0.9, lr 0.1 with 5
    warm-up epochs (half the epochs when fewer than 10) and cosine decay, weight decay 5e-4;
    the teacher of a distillation method shares it.
    """
    args = parse_arg(
        arg, root="", imb=1.0, model="resnet10", augment="imagenet", size=0, epochs=100
    )
    c = base_config()
    c.method = method
    c.data.name = "folder"
    c.data.root = args.root
    c.data.imbalance_factor = args.imb
    c.data.image_size = args.size
    c.data.augment = args.augment
    c.model.name = c.teacher.model = args.model
    c.teacher.num_epochs = c.num_epochs = args.epochs
    c.batch_size = 128
    c.eval_batch_size = 200
    c.optim.lr = 0.1
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = min(5, args.epochs // 2)  # a short smoke run (epochs=1) still decays
    c.optim.weight_decay = 5e-4
    return c


# What a method's own config (configs/<method>_cifar.py) sets beyond the shared recipe:
# `with_method` carries these, plus the whole `loss` section, onto another recipe.
METHOD_FIELDS = (
    "method",
    "model.head",
    "teacher.head",
    "teacher.count",
    "teacher.color_jitter_teachers",
    "data.sampler",
)
# Loss settings counted in epochs: scaled to the recipe's length by `with_method`.
EPOCH_FIELDS = ("drw_epoch", "warmup_epochs")


def method_config(method: str) -> ml_collections.ConfigDict:
    """The config of configs/<method>_cifar.py (default argument): a method's loss settings."""
    import importlib.util  # noqa: PLC0415
    import pathlib  # noqa: PLC0415

    configs = pathlib.Path(__file__).resolve().parents[1] / "configs"
    path = configs / f"{method}_cifar.py"
    if not path.exists():
        known = sorted(p.name.removesuffix("_cifar.py") for p in configs.glob("*_cifar.py"))
        raise ValueError(
            f"no config for method {method!r} ({path} is missing); choose one of {known}"
        )
    spec = importlib.util.spec_from_file_location(f"config_{method}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(None)


def with_method(
    recipe: ml_collections.ConfigDict, method: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """`recipe` (data, models, schedule) running the method of `method` (a method's config,
    e.g. `method_config('dkd')`) with its loss settings. Loss settings counted in epochs
    (DRW start, DKD warm-up) keep their fraction of training: 160 of 200 epochs becomes 80
    of 100. Returns an unlocked copy; `recipe` is unchanged."""
    c = ml_collections.ConfigDict(recipe.to_dict())
    for field in METHOD_FIELDS:
        section, _, name = field.rpartition(".")
        (c[section] if section else c)[name] = (method[section] if section else method)[name]
    c.loss = ml_collections.ConfigDict(method.loss.to_dict())
    scale = recipe.num_epochs / method.num_epochs
    for name in EPOCH_FIELDS:
        c.loss[name] = int(round(method.loss[name] * scale))
    return c
