"""Shared config defaults, imported by the files under `configs/`.

Every experiment config starts from `base_config(method)` and changes a few fields, so the
full set of knobs is documented once, here (`--print_config` shows every field with its
comment). `config.checks.validate_config` checks a config before any data is read.
"""

from __future__ import annotations

import inspect
import json
import re

import ml_collections
from ml_collections import config_dict

from ltkd_jax import methods
from ltkd_jax.methods import base as method_base


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
    # A teacher run that has not reached its configured steps, or that a live process holds
    # (run.lock), is refused (runs/finished.py); True distils from it anyway, with a warning
    # in the summary.
    c.teacher.allow_unfinished = False

    # A finished run whose weights start this one (cRT, tau-norm, post-hoc adjustment).
    c.init = ml_collections.ConfigDict()
    c.init.workdir = ""
    # As teacher.allow_unfinished, for the init run.
    c.init.allow_unfinished = False


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
    # Comma-separated fields a resumed run may change although its checkpoints were trained
    # with another value, e.g. "optim.lr" to resume after a non-finite loss with a lower
    # rate (runs/rundir.py RESUME_OVERRIDABLE lists them); recorded in invocations.jsonl and
    # the summary.
    c.resume_overrides = ""


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
