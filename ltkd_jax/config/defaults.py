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

from ltkd_jax import methods, models
from ltkd_jax.data import augment, image_builders, longtail, sampling, sources, task
from ltkd_jax.methods import base as method_base
from ltkd_jax.models import cpu_ops
from ltkd_jax.training import optim


def base_config(method: str = "ce") -> ml_collections.ConfigDict:
    """The BKD/LDAM-DRW CIFAR recipe (docs/recipes.md): ResNet-32, 200 epochs, batch 128,
    running `method` with its own recipe (`set_method`, no setting: its loss defaults).
    Every field is documented here or in the section builders below; `--print_config`
    shows the comments."""
    c = ml_collections.ConfigDict()
    # Seeds the initial weights, the sampler order and the augmentation draws (a stage-1
    # teacher k trains with seed + 1000 * (k + 1)).
    c.seed = 0
    # The method (ltkd_jax/methods/): a loss to train, or a correction of a finished run;
    # its hyper-parameters are config.loss.
    c.method = method
    _add_data(c)
    _add_model(c)
    # The method's own hyper-parameters: exactly the fields its module declares
    # (ltkd_jax/methods/<method>.py), each with its default; --print_config lists them.
    c.loss = loss_section(method)
    _add_teacher_and_init(c)
    _add_optim(c)
    _add_run(c)
    return set_method(c, method)


def _add_data(c: ml_collections.ConfigDict) -> None:
    """config.data: which data, which long-tailed subset, how it is fed and grouped."""
    c.data = ml_collections.ConfigDict()
    # The dataset: a built-in benchmark, or 'folder' for your own <split>/<class>/<image>
    # tree (docs/own_data.md).
    c.data.name = "cifar100"
    # Where prepared tfds data lives; empty means ~/tensorflow_datasets.
    c.data.data_dir = ""
    # CIFAR: a local zip ({train,test}/<class>/<image>; a JPEG zip is lossy) or the official
    # pickle tarball (cifar-10-python.tar.gz: the original pixels); empty means download.
    # For 'folder' the user's image tree (folder or zip of <split>/<class>/<image>); for
    # imagenet_lt / places_lt / inat2018 the image root the list files are relative to.
    c.data.archive = ""
    c.data.root = c.data.get_ref("archive")  # alias: --config.data.root=/path sets archive
    # Folder holding the benchmark list files (ImageNet_LT_train.txt, ...); empty = the root.
    c.data.list_dir = ""
    # Side of the square images the model sees; 0 = 224 (ImageNet-style datasets) or, for
    # folders, the typical shorter side of the images if smaller. Ignored by cifar / digits.
    c.data.image_size = 0
    # Decode the whole dataset into RAM (resized to image_size: yes) or read and decode per
    # example in the input workers (no); auto = RAM when it needs <= 2 GiB.
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
    # Largest / smallest class of the long-tailed training subset taken from the data
    # (1 = the data as it is; docs/data.md#long-tailed-cifar-subsets).
    c.data.imbalance_factor = 100.0
    # How class sizes fall from the head to the tail: exp (n_max * IF^(-c / (C - 1)), the
    # LDAM-DRW profile) or step (half the classes at n_max, half at n_max / IF).
    c.data.profile = "exp"
    # Seeds which images the long-tailed subset and a val_fraction hold-out keep (LDAM-DRW's
    # np.random.seed(0); docs/data.md).
    c.data.lt_seed = 0
    # Which training images a batch draws (docs/sampling.md).
    c.data.sampler = "instance"
    # The training augmentation: cifar (4-pixel pad, random crop, flip), imagenet
    # (random-resized crop + flip), none, or auto (cifar for images of 64 px or less,
    # imagenet above).
    c.data.augment = "cifar"
    # After the geometric augmentation: SimCLR v2 colour jitter (s = 1, p = 0.8) + random
    # grayscale (p = 0.2), as CBD_ENS's data-aug teachers (docs/data.md#colour-jitter).
    c.data.color_jitter = False
    # grain worker processes decoding and augmenting on the host path; 0 = in the main
    # process.
    c.data.num_workers = 0
    # In-RAM splits (CIFAR, digits, folders that fit) live on the devices and a whole chunk
    # of steps (gather, crop/flip, step) runs in one jitted call; False feeds every batch
    # from the host through grain, as record splits and colour jitter always do.
    c.data.device_resident = True
    # Mean/std normalisation of the input (data.norm_stats); False feeds pixels in [0, 1],
    # as CBD does (docs/recipes.md#cbd).
    c.data.normalize = True
    # Which mean/std (data/augment.py NORM_STATS): auto (the dataset's: ldam for CIFAR,
    # imagenet for photos and folders, digits), ldam (the LDAM-DRW / BKD constants),
    # cifar100 (CIFAR-100's own, as mdistiller), imagenet or digits.
    c.data.norm_stats = "auto"
    # Shot groups by training images per class (docs/evaluation.md#shot-groups): a class
    # is many-shot above many_threshold, few-shot below few_threshold, medium in between.
    c.data.many_threshold = 100
    # Classes with fewer training images than this are few-shot (see many_threshold).
    c.data.few_threshold = 20
    # How classes are grouped for the many / medium / few report: shot (the thresholds
    # above, the LDAM / decoupling protocol) | tail33 (top 33% / next 34% / bottom 33% of
    # classes by training count, as LTKD reports its "tail").
    c.data.eval_groups = "shot"


def _add_model(c: ml_collections.ConfigDict) -> None:
    """config.model: the student network."""
    c.model = ml_collections.ConfigDict()
    # The student's backbone (ltkd_jax/models/).
    c.model.name = "resnet32"
    # The classifier on the pooled features: linear; normed (normalised features and
    # weights, LDAM's NormedLinear); cosine (CBD's fixed-scale cosine classifier).
    c.model.head = "linear"
    # Compute dtype of the convolutions and matmuls; parameters and the loss stay float32.
    c.model.dtype = "float32"
    # CPU fast paths (models/cpu_ops.py: GEMM weight-gradient convs and BatchNorm, BN folded
    # into frozen teachers, no YNNPACK fusions): auto = on when JAX runs on the CPU.
    c.model.cpu_kernels = "auto"
    # ImageNet-style ResNets: start the last BatchNorm gamma of every block at 0 (CBD's code).
    c.model.zero_init_residual = False
    # Conv and linear-head kernel init (models/layers.py): ldam (the LDAM-DRW / BKD ResNets:
    # Kaiming-normal fan_in) | mdistiller (its CIFAR ResNets: Kaiming-normal fan_out convs,
    # PyTorch's default linear).
    c.model.weight_init = "ldam"


def _add_teacher_and_init(c: ml_collections.ConfigDict) -> None:
    """config.teacher (a distillation method's frozen teachers) and config.init."""
    # The frozen teacher(s) of a distillation method.
    c.teacher = ml_collections.ConfigDict()
    # A finished teacher run's workdir (comma-separated for an ensemble). Empty: the run
    # first trains its teacher(s) into WORKDIR/teacher (WORKDIR/teacher_<k> for several).
    c.teacher.workdir = ""
    # The teacher's backbone, and the one a stage-1 teacher is trained with.
    c.teacher.model = "resnet32"
    # The teacher's classifier head (see model.head).
    c.teacher.head = "linear"
    # Epochs of a stage-1 teacher (with the student's optimiser and schedule).
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

    c.init = ml_collections.ConfigDict()
    # The workdir of a finished run whose weights start this one (cRT) or which a post-hoc
    # correction evaluates (tau_norm, posthoc_la).
    c.init.workdir = ""
    # As teacher.allow_unfinished, for the init run.
    c.init.allow_unfinished = False


def _add_optim(c: ml_collections.ConfigDict) -> None:
    """config.optim: SGD with momentum, coupled weight decay, the LR schedule."""
    c.optim = ml_collections.ConfigDict()
    # Peak learning rate (after the warm-up) of SGD.
    c.optim.lr = 0.1
    # SGD momentum (heavy ball); 0 = plain SGD.
    c.optim.momentum = 0.9
    # Nesterov momentum instead of heavy ball.
    c.optim.nesterov = False
    # Coupled L2 on every parameter, BatchNorm included (docs/recipes.md#optimiser).
    c.optim.weight_decay = 2e-4
    # The learning-rate schedule after the linear warm-up: step (multiplied by decay_factor
    # at each of decay_epochs) or cosine (to 0 at the last step).
    c.optim.schedule = "step"
    # Epochs of linear warm-up from 0 to lr.
    c.optim.warmup_epochs = 5
    # step schedule: the epochs at which the learning rate is multiplied by decay_factor.
    c.optim.decay_epochs = (160, 180)
    # step schedule: the factor applied at each of decay_epochs.
    c.optim.decay_factor = 0.01


def _add_run(c: ml_collections.ConfigDict) -> None:
    """How the run goes: batch sizes, epochs, logging, chunks, devices, checkpoints."""
    c.batch_size = 128  # global, over all devices and processes
    # Training epochs; an epoch is len(train) // batch_size steps.
    c.num_epochs = 200
    # Global batch of evaluation (padded and masked: every test image counts once).
    c.eval_batch_size = 100
    # Evaluate (and checkpoint) every this many epochs, and after the last.
    c.eval_every_epochs = 1
    # > 0 caps the steps of every epoch: smoke runs of the real recipe on a CPU.
    c.max_steps_per_epoch = 0
    # A train record (mean loss, accuracy, lr, images/s) every this many steps and at
    # every epoch end.
    c.log_every_steps = 50
    # Steps per jitted call on the device-resident path; 0 = a whole epoch. Smaller chunks
    # advance the progress bar more often, at one host round trip each.
    c.scan_steps = 0
    c.num_devices = 0  # 0 = every device JAX sees; n = the first n (a data-parallel mesh)
    # A tqdm progress bar on the console (log lines then go above it).
    c.progress_bar = True
    c.keep_checkpoints = 2  # the latest N are kept, plus the best by top-1
    # Comma-separated fields a resumed run may change although its checkpoints were trained
    # with another value, e.g. "optim.lr" to resume after a non-finite loss with a lower
    # rate (RESUME_OVERRIDABLE below lists them); recorded in invocations.jsonl and
    # the summary.
    c.resume_overrides = ""


# Fields a resumed run may change when `config.resume_overrides` names them: the recovery
# from a non-finite loss (a lower rate from the last good checkpoint). The learning rate is
# an argument of the schedule, not part of the optimiser state, so the checkpoints restore
# as they are (training/optim.py).
RESUME_OVERRIDABLE = frozenset({"optim.lr"})


def override_names(config) -> list[str]:
    """The fields `config.resume_overrides` names (comma-separated)."""
    text = config.get("resume_overrides", "") or ""
    return [name.strip() for name in text.split(",") if name.strip()]


TEACHER_SEED_STRIDE = 1000


def teacher_seed(seed: int, index: int) -> int:
    """The seed of stage-1 teacher `index` of a run with seed `seed`: seed + 1000 * (index + 1).

    Distinct from the student's seed and from every other teacher's; with seeds below 1000
    (as in a table over seeds 0, 1, 2) no teacher seed equals any student seed either.
    """
    return seed + TEACHER_SEED_STRIDE * (index + 1)


def loss_section(method: str) -> ml_collections.ConfigDict:
    """The `config.loss` section of `method` at its defaults. An unknown name gets an empty
    section: validate_config reports it."""
    if method in methods.METHODS:
        return methods.default_config(method)
    return ml_collections.ConfigDict()


def set_method(
    config: ml_collections.ConfigDict, method: str, setting: methods.Setting | None = None
) -> ml_collections.ConfigDict:
    """Switches an unlocked config to `method` with the recipe its `Spec` declares: its
    `config.loss` (at the values its official code uses in `setting`, else its defaults), its
    sampler, head (its teachers' too) and ensemble size. Returns `config`."""
    config.method = method
    config.loss = loss_section(method)
    if method not in methods.METHODS:
        return config  # validate_config names the unknown method
    spec = methods.get(method)
    if setting is not None:
        config.loss.update(spec.official_settings(setting))
    config.data.sampler = spec.sampler
    if spec.head is not None:
        config.model.head = spec.head
    config.teacher.count = spec.teacher_count
    config.teacher.color_jitter_teachers = spec.color_jitter_teachers
    if spec.head is not None and methods.num_teachers(config):
        config.teacher.head = spec.head
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


COHORT_DATA_MODE_COMMENT = (
    "shared: every member sees the batches of the first member's seed; per_seed: each member "
    "its own seed's, exactly as its single run. One of: shared | per_seed."
)


def _section_comments() -> dict[str, str]:
    """'section' -> the first line of the docstring of the function that builds it."""
    builders = {"data": _add_data, "model": _add_model, "optim": _add_optim}
    comments = {name: fn.__doc__.split(":", 1)[1].strip() for name, fn in builders.items()}
    comments["teacher"] = "the frozen teacher(s) of a distillation method"
    comments["init"] = "a finished run whose weights start this one (cRT, post-hoc corrections)"
    comments["loss"] = "the method's own hyper-parameters (ltkd_jax/methods/<method>.py)"
    return comments


# A cohort member's own fields (and sections); every other field is the cohort's, shared by
# all members.
MEMBER_FIELDS = ("method", "seed", "loss", "model.name", "model.head")


def is_member_field(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in MEMBER_FIELDS)


def cohort_config(
    members: dict[str, ml_collections.ConfigDict], data_mode: str = "shared"
) -> ml_collections.ConfigDict:
    """A cohort (ltkd_jax/runs/cohort.py) of complete run configs, name -> config. The
    shared fields live at the top, as in a run config, and every member's shared fields are
    references to them: `--config.num_epochs=2` reaches every member. A member's own fields
    (`MEMBER_FIELDS`) stay under `members.<name>`."""
    first = next(iter(members.values())).to_dict()
    c = ml_collections.ConfigDict()
    for key, value in first.items():
        if isinstance(value, dict):
            own = {k: v for k, v in value.items() if not is_member_field(f"{key}.{k}")}
            if not is_member_field(key):
                c[key] = ml_collections.ConfigDict(own)
        elif not is_member_field(key):
            c[key] = value
    # shared: every member sees the batches of the first member's seed; per_seed: each
    # member its own seed's, exactly as its single run.
    c.data_mode = data_mode
    c.members = ml_collections.ConfigDict(sort_keys=False)  # the members in the order given
    for name, member in members.items():
        m = ml_collections.ConfigDict(member.to_dict())
        for key in [k for k in c.keys() if k not in ("members", "data_mode")]:
            if isinstance(c[key], ml_collections.ConfigDict):
                for field in c[key].keys():
                    m[key][field] = c[key].get_ref(field)
            else:
                m[key] = c.get_ref(key)
        c.members[name] = m
    return c


def _describe_cohort(config: ml_collections.ConfigDict) -> str:
    """The shared fields as for a run, then each member's own fields."""
    shared = ml_collections.ConfigDict(
        {k: v for k, v in config.items() if k not in ("members", "data_mode")}
    )
    shared.method = "ce"  # for the comments of the shared fields only
    lines = describe_config(shared).splitlines()
    lines = [line for line in lines if not line.startswith("method = ")]
    lines.insert(0, f"data_mode = {config.data_mode!r}  # {COHORT_DATA_MODE_COMMENT}")
    for name, member in config.members.items():
        lines.append(f"\n[members.{name}]  # a member's own fields; the others are shared")
        for line in describe_config(member).splitlines():
            if " = " in line and is_member_field(line.split(" = ")[0]):
                lines.append(f"members.{name}.{line}")
    return "\n".join(lines)


def field_choices() -> dict[str, tuple]:
    """Every config field whose value must be one of a list of names, with that list: the
    implementing module's own (`--print_config` shows them too)."""
    return {
        "method": tuple(methods.NAMES),
        "data.name": tuple(sources.DATASETS),
        "data.profile": tuple(longtail.PROFILES),
        "data.sampler": tuple(sampling.SAMPLERS),
        "data.augment": tuple(augment.AUGMENT_CHOICES),
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


def describe_config(config: ml_collections.ConfigDict) -> str:
    """Every field as `name = value  # comment`, with its choices where it has a list; a
    cohort's shared fields, then each member's own."""
    if "members" in config:
        return _describe_cohort(config)
    comments = {**field_comments(config.method), **_section_comments()}
    choices = field_choices()
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
                if name in choices:
                    note += f" One of: {' | '.join(map(str, choices[name]))}."
                lines.append(f"{name} = {value!r}" + (f"  # {note.strip()}" if note else ""))

    walk(config, "")
    return "\n".join(lines).strip()


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; tuples and lists compared as lists."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, (tuple, list)) else value
    return out


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks the config so a typo in a field name fails instead of adding a field."""
    config.lock()
    return config


def parse_arg(arg: str | None, **defaults):
    """Parses 'k=v,k2=v2' (the text after ':' in `--config file.py:arg`) into a ConfigDict.

    A value may itself hold commas ('methods=ce,kd,bkd,seeds=0,1'): an item without '='
    continues the value before it. Values are converted to the type of the default; unknown
    keys are an error.
    """
    out = ml_collections.ConfigDict(defaults)
    if not arg:
        return out
    pairs: list[list[str]] = []
    for item in arg.split(","):
        key, sep, value = item.partition("=")
        if sep:
            pairs.append([key.strip(), value])
        elif pairs:
            pairs[-1][1] += "," + item
        else:
            pairs.append([item.strip(), None])
    for key, value in pairs:
        if value is None or key not in defaults:
            raise ValueError(
                f"config argument {key!r} not understood; expected key=value with key one of "
                f"{sorted(defaults)}"
            )
        default = defaults[key]
        out[key] = type(default)(value) if default is not None else value
    return out


def upgrade_saved_config(saved: dict) -> dict:
    """A run directory's config.json as this version writes it.

    Runs written before every method owned its `config.loss` section kept one shared section
    (unset fields None, meaning "the loss function's default") and `model.projection_dim`.
    The section becomes the method's own fields, None replaced by the default, which is the
    value the old loss used; the projection width is now derived from the method. Runs
    written before `data.norm_stats` and `model.weight_init` used the dataset's statistics
    and the LDAM-DRW init: their values are written in, so resuming such a run under a recipe
    that changes them (the mdistiller recipe) is refused instead of switching mid-run.
    """
    out = json.loads(json.dumps(saved))
    out.get("model", {}).pop("projection_dim", None)
    if isinstance(out.get("data"), dict):
        out["data"].setdefault("norm_stats", "auto")
    if isinstance(out.get("model"), dict):
        out["model"].setdefault("weight_init", "ldam")
    method, old = out.get("method"), out.get("loss")
    if method in methods.METHODS and isinstance(old, dict):
        defaults = methods.default_config(method).to_dict()
        out["loss"] = {k: v if old.get(k) is None else old[k] for k, v in defaults.items()}
    return out
