"""Long-tailed subsets (LDAM-DRW generator, methods.md 2.1) and shot groups (methods.md 3)."""

from __future__ import annotations

import numpy as np

from ltkd_jax.data.sources import Split

PROFILES = ("exp", "step")
GROUP_NAMES = ("many", "medium", "few")


def longtail_counts(
    n_max: int, num_classes: int, imbalance_factor: float, profile: str = "exp"
) -> np.ndarray:
    """int64 [C] images per class; class 0 is the head (methods.md 2.1, TV15).

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
    """Indices of the LT subset, grouped by class in label order (methods.md 2.1).

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


def make_longtail(
    split: Split, imbalance_factor: float, *, profile: str = "exp", seed: int = 0
) -> Split:
    """The long-tailed subset of a balanced split; n_max = its smallest class count.

    With the (label, within-class index) ordering of `load_splits`, this keeps exactly the
    images LDAM-DRW / BKD keep for CIFAR-LT (5000 / 500 per class before the cut).
    imbalance_factor 1 returns the split unchanged: ImageNet-LT, iNaturalist and a user's
    already long-tailed folder are used as they are.
    """
    if imbalance_factor == 1:
        return split
    n_max = int(split.class_counts().min())
    counts = longtail_counts(n_max, split.num_classes, imbalance_factor, profile)
    return split.subset(longtail_indices(split.labels, counts, seed))


def shot_groups(class_counts: np.ndarray, many: int = 100, few: int = 20) -> np.ndarray:
    """int32 [C] by training count: 0 many (n > many), 1 medium, 2 few (n < few); methods.md 3."""
    n = np.asarray(class_counts)
    return np.where(n > many, 0, np.where(n < few, 2, 1)).astype(np.int32)
