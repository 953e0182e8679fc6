"""Data layer: TF-free TFDS CIFAR builders, in-RAM splits, long-tailed subsets, re-weighted
sampling and grain pipelines (methods.md 1-3, style.md 2.c-2.d)."""

from ltkd_jax.data.augment import (
    AUGMENTS,
    CIFAR_MEAN,
    CIFAR_STD,
    augment_batch,
    crop_flip,
    dataset_stats,
    draw_crop_flip,
    normalize,
)
from ltkd_jax.data.longtail import (
    GROUP_NAMES,
    PROFILES,
    longtail_counts,
    longtail_indices,
    make_longtail,
    shot_groups,
)
from ltkd_jax.data.pipeline import eval_batches, make_train_iterator, num_eval_batches
from ltkd_jax.data.sampling import SAMPLERS, ReweightedIndexSequence, class_sampling_probs
from ltkd_jax.data.sources import DATASETS, ArraySplit, load_digits, load_splits

__all__ = [
    "AUGMENTS",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "GROUP_NAMES",
    "PROFILES",
    "SAMPLERS",
    "ArraySplit",
    "ReweightedIndexSequence",
    "augment_batch",
    "class_sampling_probs",
    "crop_flip",
    "dataset_stats",
    "draw_crop_flip",
    "eval_batches",
    "load_digits",
    "load_splits",
    "longtail_counts",
    "longtail_indices",
    "make_longtail",
    "make_train_iterator",
    "normalize",
    "num_eval_batches",
    "shot_groups",
]
