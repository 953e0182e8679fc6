"""Long-tailed subsets (LDAM-DRW's generator, docs/data.md#long-tailed-cifar-subsets) and
class groups for evaluation (docs/evaluation.md#shot-groups, #tail33)."""

from __future__ import annotations

import numpy as np
from absl import logging

from ltkd_jax.data.sources import Split
from ltkd_jax.errors import UserError

PROFILES = ("exp", "step")
GROUP_NAMES = ("many", "medium", "few")


def longtail_counts(
    n_max: int, num_classes: int, imbalance_factor: float, profile: str = "exp"
) -> np.ndarray:
    """int64 [C] images per class; class 0 is the head (LDAM-DRW imbalance_cifar.py).

    exp: `int(n_max * (1/IF)**(c/(C-1)))`; step: the first C//2 classes keep n_max, the rest
    `int(n_max * (1/IF))`. The float expressions are the LDAM code's, so `int()` truncation
    gives identical counts (12,406 for CIFAR-10 IF100, 10,847 for CIFAR-100 IF100).
    """
    if imbalance_factor < 1:
        raise ValueError(
            f"imbalance_factor must be >= 1 (n_max / n_min), got {imbalance_factor}; "
            "note the LDAM CLI's imb_factor is its inverse (0.01 means IF 100)."
        )
    if num_classes < 1 or n_max < 1:
        raise ValueError(f"need n_max >= 1 and num_classes >= 1, got {n_max}, {num_classes}")
    imb = 1.0 / imbalance_factor  # LDAM's `imb_factor`; keep its float arithmetic.
    if profile == "exp":
        denom = max(num_classes - 1.0, 1.0)  # One class: nothing to decay.
        counts = [int(n_max * imb ** (c / denom)) for c in range(num_classes)]
    elif profile == "step":
        head = num_classes // 2
        counts = [n_max] * head + [int(n_max * imb)] * (num_classes - head)
    else:
        raise ValueError(f"unknown long-tail profile {profile!r}; choose one of {PROFILES}.")
    return np.asarray(counts, dtype=np.int64)


def longtail_indices(labels: np.ndarray, counts: np.ndarray, seed: int = 0) -> np.ndarray:
    """Indices of the LT subset, grouped by class in label order (LDAM-DRW imbalance_cifar.py).

    Same draw as LDAM-DRW's `np.random.seed(seed)` + per-class `np.random.shuffle`: a
    `RandomState(seed)` has the global generator's MT19937 stream. For each class in label
    order, shuffle its indices (ascending) and keep the first `counts[c]`.
    """
    labels = np.asarray(labels)
    counts = np.asarray(counts)
    rng = np.random.RandomState(seed)
    keep = []
    for c, n_c in enumerate(counts):
        idx = np.where(labels == c)[0]
        if n_c > len(idx):
            raise ValueError(f"class {c} has {len(idx)} examples, cannot keep {n_c}")
        rng.shuffle(idx)
        keep.append(idx[:n_c])
    return np.concatenate(keep).astype(np.int64)


# A split counts as balanced (imbalance_factor > 1 may cut a tail from it) when its largest
# class has at most this many times the images of its smallest.
BALANCED_RATIO = 2.0


def check_cut_allowed(class_counts: np.ndarray, imbalance_factor: float) -> None:
    """UserError when `imbalance_factor > 1` would cut a tail out of an imbalanced split
    (largest class > `BALANCED_RATIO` x the smallest): the cut follows the class index, not
    the data. Needs only the counts, so a folder is checked from its file listing."""
    counts = np.asarray(class_counts)
    if imbalance_factor != 1 and counts.max() > BALANCED_RATIO * max(counts.min(), 1):
        raise UserError(
            f"imbalance_factor={imbalance_factor:g} cuts a long tail out of a balanced training "
            f"split, but this one is already imbalanced ({counts.max()} to {counts.min()} "
            "images per class); cutting it would empty its tail classes. Use it as it is: "
            "imb=1 in the folder configs (--config.data.imbalance_factor=1)."
        )


def make_longtail(
    split: Split, imbalance_factor: float, *, profile: str = "exp", seed: int = 0
) -> Split:
    """The long-tailed subset of a balanced split; n_max = its smallest class count.

    With the (label, within-class index) ordering of `load_splits`, this keeps exactly the
    images LDAM-DRW / BKD keep for CIFAR-LT (5000 / 500 per class before the cut).
    imbalance_factor 1 returns the split unchanged: ImageNet-LT, iNaturalist and a user's
    already long-tailed folder are used as they are. A split that is not balanced (largest
    class > 2x the smallest) is refused: the cut follows the class index, not the data, and
    would empty tail classes. Every class keeps at least one image (when n_max < IF).
    """
    if imbalance_factor == 1:
        return split
    counts_now = split.class_counts()
    check_cut_allowed(counts_now, imbalance_factor)
    n_max = int(counts_now.min())
    counts = longtail_counts(n_max, split.num_classes, imbalance_factor, profile)
    if counts.min() < 1:
        logging.warning(
            "imbalance_factor=%g with %d images in the smallest class would leave %d classes "
            "empty; each keeps 1 image (the effective imbalance is %d).",
            imbalance_factor,
            n_max,
            int((counts < 1).sum()),
            n_max,
        )
        counts = np.maximum(counts, 1)
    return split.subset(longtail_indices(split.labels, counts, seed))


def check_classes_present(split: Split, what: str = "training") -> None:
    """Raises when a class has no image in `split`, naming the classes (before training)."""
    counts = split.class_counts()
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        names = [class_name(split, c) for c in empty[:10]]
        more = f" and {empty.size - 10} more" if empty.size > 10 else ""
        raise ValueError(
            f"{empty.size} of {split.num_classes} classes have no {what} images: "
            f"{names}{more}. Add images to those classes (or remove their folders), or use "
            "imbalance_factor 1 (imb=1) if a long-tailed cut emptied them."
        )


def class_name(split: Split, c: int) -> str:
    """The name of class `c` (its index when the split has no names)."""
    return split.class_names[c] if len(split.class_names) > c else str(c)


def stratified_holdout(split: Split, fraction: float, seed: int = 0) -> tuple[Split, Split]:
    """(train, val): a seeded `fraction` of each class moved to val, in label order.

    A class with n >= 2 images gives min(n - 1, max(1, round(fraction * n))) of them to val,
    so every class is in both parts (val's mean per-class accuracy covers all classes);
    a class with one image stays in train.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {fraction}")
    rng = np.random.RandomState(seed)
    keep, held = [], []
    for c in range(split.num_classes):
        idx = np.flatnonzero(split.labels == c)
        n_val = min(len(idx) - 1, max(1, int(round(fraction * len(idx))))) if len(idx) > 1 else 0
        chosen = np.zeros(len(idx), bool)
        chosen[rng.permutation(len(idx))[:n_val]] = True
        keep.append(idx[~chosen])
        held.append(idx[chosen])
    return split.subset(np.concatenate(keep)), split.subset(np.concatenate(held))


def shot_groups(class_counts: np.ndarray, many: int = 100, few: int = 20) -> np.ndarray:
    """int32 [C] by training count: 0 many (n > many), 1 medium, 2 few (n < few).

    The OLTR / decoupling protocol (classifier-balancing utils.py, shot_acc); see
    docs/evaluation.md#shot-groups.
    """
    n = np.asarray(class_counts)
    return np.where(n > many, 0, np.where(n < few, 2, 1)).astype(np.int32)


def tail33_groups(class_counts: np.ndarray) -> np.ndarray:
    """int32 [C]: classes sorted by training count (descending, ties by index); the top 33%
    are head (0), the bottom 33% tail (2), the rest medium (1). CIFAR-100: 33 / 34 / 33,
    10 classes: 3 / 4 / 3. LTKD's split (Kim, CVPR 2026, as the paper-notes digest gives it)."""
    n = np.asarray(class_counts)
    edge = max(round(0.33 * len(n)), 1)
    rank = np.empty(len(n), np.int64)
    rank[np.argsort(-n, kind="stable")] = np.arange(len(n))
    return np.where(rank < edge, 0, np.where(rank >= len(n) - edge, 2, 1)).astype(np.int32)


def tercile_thresholds(class_counts: np.ndarray) -> tuple[int, int] | None:
    """(many, few) thresholds that split the classes into three non-empty shot groups as
    evenly as the counts allow (many: n > many, few: n < few); None with < 3 distinct counts.

    Searches every pair of distinct counts (few = a, many = b, a <= b) for the groups whose
    sizes are closest to C / 3 each (least squares).
    """
    n = np.sort(np.asarray(class_counts))
    values = np.unique(n)
    if len(values) < 3:
        return None
    below = np.searchsorted(n, values, side="left")  # classes with n < value
    above = len(n) - np.searchsorted(n, values, side="right")  # classes with n > value
    few_sizes, many_sizes = below[:, None], above[None, :]
    medium = len(n) - few_sizes - many_sizes
    third = len(n) / 3
    cost = (few_sizes - third) ** 2 + (many_sizes - third) ** 2 + (medium - third) ** 2
    valid = (few_sizes > 0) & (many_sizes > 0) & (medium > 0)
    valid &= np.arange(len(values))[:, None] <= np.arange(len(values))[None, :]
    cost = np.where(valid, cost, np.inf)
    a, b = np.unravel_index(np.argmin(cost), cost.shape)
    return int(values[b]), int(values[a])


def shot_thresholds(
    class_counts: np.ndarray, many: int, few: int, derive: bool
) -> tuple[int, int, bool]:
    """(many, few, derived): the configured thresholds, or, when `derive` and they leave a
    shot group empty, `tercile_thresholds` (benchmarks keep the literature's; folders derive).
    """
    if derive and np.bincount(shot_groups(class_counts, many, few), minlength=3).min() == 0:
        derived = tercile_thresholds(class_counts)
        if derived is not None:
            return *derived, True
    return many, few, False
