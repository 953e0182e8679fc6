"""The reproduction tables of `scripts/reproduce.py`: rows, reference numbers, cost model.

Pure data and numpy helpers (no JAX), so `--dry_run` and the tests read them cheaply.
Every row is one `python -m ltkd_jax.main` command: a config file under `configs/`, its
argument and `--config.*` overrides. One CE teacher per seed is trained first; the
distillation rows point `teacher.workdir` at it, cRT and tau-norm point `init.workdir` at
it. `docs/reproduce.md` describes the tables and what the numbers mean.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ltkd_jax.data.longtail import longtail_counts


@dataclasses.dataclass(frozen=True)
class Row:
    """One method of a table.

    key: the run's folder name; config: `configs/<config>.py`; overrides: `field=value`
    strings passed as `--config.field=value`; link: how the row uses the seed's teacher run
    ("teacher" = distil from it, "init" = start from / correct it, "" = independent).
    """

    key: str
    label: str
    config: str
    overrides: tuple[str, ...] = ()
    link: str = ""
    note: str = ""
    arg: str | None = None  # the config argument; None = the table's


@dataclasses.dataclass(frozen=True)
class Reference:
    """A published number to compare a row against, with its source and the target gap."""

    key: str
    top1: float
    source: str
    tail: float | None = None  # the paper's tail-group accuracy, where it reports one
    target: float | None = None  # the project's target: |mean - top1| <= target points


@dataclasses.dataclass(frozen=True)
class Table:
    name: str
    title: str
    dataset: str
    config_arg: str  # the `configs/<x>.py:ARG` argument shared by every row
    teacher: Row  # trained first, once per seed; also a row of the table
    rows: tuple[Row, ...]
    references: tuple[Reference, ...] = ()
    tail_fraction: float = 0.0  # > 0 adds the bottom-fraction-by-count "tail" column
    common: tuple[str, ...] = ()  # overrides for every run (the smoke table's data)
    notes: tuple[str, ...] = ()

    @property
    def all_rows(self) -> tuple[Row, ...]:
        return (self.teacher, *self.rows)

    def row(self, key: str) -> Row:
        for row in self.all_rows:
            if row.key == key:
                return row
        raise KeyError(key)


# The distillation methods whose own published numbers are unknown (issue 16): their rows
# are read against KD on the same teacher.
AGAINST_KD = ("bkd", "dukd", "krdistill")
DISTILLERS = ("kd", "bkd", "dkd", "dukd", "krdistill", "ltkd")

# The teacher of table 2: ResNet32x4 on the mdistiller recipe. A test checks that it equals
# `teachers.teacher_config` of the students' config.
MDISTILLER_TEACHER_ARG = "student=resnet32x4,recipe=mdistiller"

# The reference check reads a row at its best epoch, and says why in every table.
REFERENCE_EPOCH_WHY = (
    "The check reads our rows at their best epoch (the highest test top-1 over training), "
    "because the code behind the references reports that number: LDAM-DRW's cifar_train.py "
    "and the BKD repository's train_student.py print \"Best Prec@1\", mdistiller's trainer "
    "keeps best_acc (LTKD has no public code; its author's other KD code builds on "
    "mdistiller). Which epoch the logit-adjustment paper reports is not known to us; it is "
    "read the same way. The final epoch is shown beside it."
)
# The default CIFAR-10 archive is a JPEG copy; the table says so, and which source each run read.
CIFAR10_JPEG_NOTE = (
    "CIFAR-10 is read from ../shared/data/cifar10-jpeg.zip by default: a lossy JPEG "
    "re-encoding, so accuracies can differ slightly from the papers', whose code reads the "
    "original pickles. `--archive=/path/to/cifar-10-python.tar.gz` (the official pickles) "
    "trains on the original pixels; the Data section says what each run read."
)

LDAM = "LDAM-DRW paper (Cao et al. 2019, Table 2)"
LOGIT_ADJUST = "logit-adjustment paper (Menon et al. 2021, Table 2)"
LTKD_DIGEST = "third-party digest of arXiv 2506.18496 (LTKD)"


def _distillers(keys) -> tuple[Row, ...]:
    """Distillation rows from the seed's teacher; each config resolves its method's official
    settings for the table's recipe and pair itself (e.g. mdistiller's KD weights)."""
    labels = {
        "kd": "KD",
        "bkd": "BKD",
        "dkd": "DKD",
        "dukd": "DU-KD/TGLS (reconstruction)",
        "krdistill": "KRDistill (reconstruction)",
        "ltkd": "LTKD (reconstruction)",
    }
    return tuple(Row(k, labels[k], f"{k}_cifar", link="teacher") for k in keys)


_CE = Row("ce", "CE (the teacher)", "ce_cifar")
_CRT = Row("crt", "cRT", "crt_cifar", link="init", note="classifier re-trained on the CE run")
_TAU = Row(
    "tau_norm",
    "tau-norm",
    "tau_norm_cifar",
    link="init",
    note="tau picked on the test split: CIFAR-LT has no validation split",
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(
            name="cifar100_lt_if100_r32",
            title="CIFAR-100-LT IF100, ResNet-32 -> ResNet-32, BKD recipe (200 epochs, batch 128)",
            dataset="cifar100",
            config_arg="",
            teacher=_CE,
            rows=(
                Row("cb", "CB (class-balanced CE)", "cb_cifar"),
                Row("focal", "focal", "focal_cifar"),
                Row("ldam_drw", "LDAM-DRW", "ldam_drw_cifar"),
                Row("logit_adjust", "logit-adjusted loss", "logit_adjust_cifar"),
                _CRT,
                _TAU,
                *_distillers(("kd", "bkd", "dkd", "dukd", "krdistill", "ltkd")),
            ),
            references=(
                Reference("ce", 38.3, LDAM, target=1.0),
                Reference("ldam_drw", 42.0, LDAM, target=1.0),
                Reference("logit_adjust", 43.9, LOGIT_ADJUST, target=1.0),
            ),
            notes=(
                "DKD: beta 2, mdistiller's value for its ResNet-56 and ResNet-110 teachers "
                "(res56_res20.yaml, res110_res32.yaml), the ResNet-32 teacher's family.",
                "KD is the BKD repository's KD row: its CE term is class re-weighted "
                "(effective number, from epoch 0).",
            ),
        ),
        Table(
            name="cifar100_lt_if100_r32x4_r8x4",
            title=(
                "CIFAR-100-LT IF100, ResNet32x4 -> ResNet8x4, mdistiller recipe "
                "(240 epochs, batch 64)"
            ),
            dataset="cifar100",
            config_arg="teacher=resnet32x4,student=resnet8x4,recipe=mdistiller",
            teacher=Row("ce", "CE teacher (ResNet32x4)", "ce_cifar", arg=MDISTILLER_TEACHER_ARG),
            rows=_distillers(("kd", "dkd", "bkd", "ltkd", "dukd", "krdistill")),
            references=(
                Reference("ltkd", 51.08, LTKD_DIGEST, tail=27.21, target=2.0),
                Reference("dkd", 46.11, LTKD_DIGEST, tail=13.25),
                Reference("kd", 42.48, LTKD_DIGEST, tail=13.38),
            ),
            tail_fraction=0.33,
            notes=(
                "tail = the bottom 33% of classes by training count, as LTKD reports it.",
                "KD is vanilla KD with mdistiller's CIFAR weights (0.1 CE + 0.9 KL, T = 4).",
                "DKD: beta 8 (mdistiller res32x4_res8x4.yaml). Every run normalises with "
                "CIFAR-100's own mean and std and initialises as mdistiller's ResNets (fan_out "
                "convs, PyTorch's Linear): docs/recipes.md#mdistiller-cifar-recipe.",
            ),
        ),
        Table(
            name="cifar10_lt_if100_r32",
            title="CIFAR-10-LT IF100, ResNet-32 -> ResNet-32, BKD recipe (200 epochs, batch 128)",
            dataset="cifar10",
            config_arg="dataset=cifar10",
            teacher=_CE,
            rows=(
                Row("focal", "focal", "focal_cifar"),
                Row("ldam_drw", "LDAM-DRW", "ldam_drw_cifar"),
                # The BKD repo forces the DRW rule on CIFAR-10: KD and BKD weight from 160.
                *_distillers(("kd", "bkd")),
            ),
            references=(
                Reference("ce", 70.4, LDAM, target=1.0),
                Reference("ldam_drw", 77.0, LDAM, target=1.0),
            ),
            notes=(
                CIFAR10_JPEG_NOTE,
                "Rows: the losses of the LDAM-DRW code the BKD repository builds on, and its "
                "KD / BKD, both under the repository's CIFAR-10 DRW rule (weights from epoch 160).",
                "CIFAR-10-LT IF100 has no few-shot class (fewest: 50 images), so 'few' is n/a.",
            ),
        ),
        # A seconds-long pipeline check on scikit-learn's digits: not a reproduction.
        Table(
            name="digits_smoke",
            title="digits-LT IF10, ResNet-8 (a pipeline check, not a reproduction)",
            dataset="digits",
            config_arg="",
            teacher=_CE,
            rows=(_TAU, *_distillers(("kd", "bkd"))),
            tail_fraction=0.33,
            common=(
                "data.name=digits",
                "data.imbalance_factor=10.0",
                "data.augment=none",
                "data.many_threshold=50",
                "data.few_threshold=20",
                "model.name=resnet8",
                "teacher.model=resnet8",
                "batch_size=32",
                "eval_batch_size=200",
                "optim.lr=0.05",
                "progress_bar=False",
            ),
        ),
    )
}


# ---------------------------------------------------------------------------------------
# Accuracy groups and statistics
# ---------------------------------------------------------------------------------------


def tail_classes(class_counts, fraction: float) -> np.ndarray:
    """Indices of the bottom `fraction` of classes by training count (LTKD's tail group).

    round(fraction * C) classes (CIFAR-100, 0.33: 33), the fewest images first; ties are
    broken towards the higher class index, the later class of the LDAM-DRW ordering.
    """
    counts = np.asarray(class_counts)
    if not 0 < fraction <= 1:
        raise ValueError(f"tail fraction must be in (0, 1], got {fraction}")
    size = max(1, int(round(fraction * len(counts))))
    # lexsort: last key primary; ascending count, then descending index.
    order = np.lexsort((-np.arange(len(counts)), counts))
    return np.sort(order[:size])


def group_accuracy(per_class_acc, classes) -> float:
    """Unweighted mean of per-class accuracy over `classes` (the test split is balanced)."""
    return float(np.mean(np.asarray(per_class_acc, dtype=np.float64)[classes]))


def mean_std(values) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1) of finite values; std None for one value."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return float("nan"), None
    return float(v.mean()), (float(v.std(ddof=1)) if v.size > 1 else None)


# ---------------------------------------------------------------------------------------
# Device-time estimate
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DeviceCost:
    """Milliseconds per image for ResNet-32 on CIFAR shapes: a train step, an evaluation."""

    train_ms: float
    eval_ms: float
    basis: str


# H100: the CE teacher (ResNet-32, CIFAR-100-LT IF100, 200 epochs of 10,847 images with a
# 10,000-image evaluation after each) took 335 s on one H100 with the previous training
# loop; split assuming an evaluated image costs 1/3 of a trained one (forward only):
# 1.675 s / epoch = 10,847 t + 10,000 t / 3 -> t = 0.118 ms.
# CPU: README's performance table (2-core AVX-512 CPU, 2026-11-22): CE training loop
# 165 images/s, evaluation 936 images/s.
COSTS = {
    "h100": DeviceCost(
        0.118,
        0.0394,
        "one measured H100 run (CE ResNet-32, 200 epochs, 335 s, previous loop)",
    ),
    "cpu": DeviceCost(
        1000 / 165, 1000 / 936, "README's 2-core CPU figures (165 train, 936 eval images/s)"
    ),
}
# Forward FLOPs relative to ResNet-32 on 32x32 inputs (mdistiller's table: 0.07 / 0.18 /
# 1.08 GFLOPs); other models are scaled by these, unmeasured.
MODEL_COST = {"resnet32": 1.0, "resnet8x4": 0.18 / 0.07, "resnet32x4": 1.08 / 0.07}
# Data loading and compilation per run.
RUN_OVERHEAD_S = 20.0
# Balanced train set per class (before the long-tailed cut) and test images.
DATASET_SIZES = {"cifar100": (500, 100, 10_000), "cifar10": (5000, 10, 10_000)}
TAU_GRID_SIZE = 21  # posthoc.tau_grid(): 0, 0.1, ..., 2.0


def train_images(dataset: str, imbalance_factor: float) -> int | None:
    if dataset not in DATASET_SIZES:
        return None
    n_max, classes, _ = DATASET_SIZES[dataset]
    return int(longtail_counts(n_max, classes, imbalance_factor).sum())


def estimate_seconds(
    device: str,
    *,
    dataset: str,
    imbalance_factor: float,
    model: str,
    teacher_model: str | None,
    batch_size: int,
    epochs: int,
    max_steps_per_epoch: int,
    evaluations: int,
) -> float | None:
    """Device seconds for `epochs` more epochs of a run; None where the data size is unknown.

    Per trained image: the student's step (+ the teacher's forward, costed as an evaluated
    image, for distillation); per evaluation: the test split; plus RUN_OVERHEAD_S.
    """
    n = train_images(dataset, imbalance_factor)
    if n is None:
        return None
    cost = COSTS[device]
    steps = n // batch_size
    if max_steps_per_epoch:
        steps = min(steps, max_steps_per_epoch)
    scale = MODEL_COST.get(model, 1.0)
    per_image = cost.train_ms * scale
    if teacher_model:
        per_image += cost.eval_ms * MODEL_COST.get(teacher_model, 1.0)
    test = DATASET_SIZES[dataset][2]
    ms = epochs * steps * batch_size * per_image + evaluations * test * cost.eval_ms * scale
    return RUN_OVERHEAD_S + ms / 1000


# A cohort's K members (one program, the teacher applied once per batch) cost, per member,
# this fraction of a single run's student step. h100: unmeasured for cohorts; from the BKD
# step measured at batch 128 (25.2k images/s) and 1024 (48.0k images/s), K stacked members
# are assumed to cost like a batch K times larger: 25.2 / 48.0 = 0.525 at K = 8,
# log-linear in K between 1 and 8. cpu: members run one by one (no gain but the shared
# teacher), 1.0.
COHORT_FACTOR_AT_8 = {"h100": 25.2 / 48.0, "cpu": 1.0}


def cohort_member_factor(device: str, members: int) -> float:
    at8 = COHORT_FACTOR_AT_8[device]
    k = min(max(members, 1), 8)
    return float(at8 ** (np.log(k) / np.log(8)))


def estimate_cohort_seconds(device: str, *, students: list[dict], teacher: dict | None) -> float:
    """Device seconds of one cohort: each member's student part (`estimate_seconds` without
    teacher and run overhead) scaled by `cohort_member_factor`, the teacher's forward pass
    once, and one run overhead. `students` and `teacher` hold `estimate_seconds` keywords."""
    factor = cohort_member_factor(device, len(students))
    seconds = RUN_OVERHEAD_S
    for kwargs in students:
        seconds += factor * (estimate_seconds(device, **kwargs) - RUN_OVERHEAD_S)
    if teacher is not None:
        with_teacher = estimate_seconds(device, **teacher)
        without = estimate_seconds(device, **{**teacher, "teacher_model": None})
        seconds += with_teacher - without
    return seconds
