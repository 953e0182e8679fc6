"""Data layer: TF-free TFDS builders (CIFAR, image folders, benchmark list files), in-RAM and
per-example splits, long-tailed subsets, re-weighted sampling and grain pipelines
(docs/data.md, docs/sampling.md, docs/evaluation.md)."""

from ltkd_jax.data.arrays import ArraySplit
from ltkd_jax.data.augment import (
    AUGMENTS,
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    augment_batch,
    crop_flip,
    dataset_stats,
    draw_crop_flip,
    normalize,
    random_resized_crop_flip,
    resize_center_crop,
)
from ltkd_jax.data.cifar import load_digits
from ltkd_jax.data.longtail import (
    GROUP_NAMES,
    PROFILES,
    longtail_counts,
    longtail_indices,
    make_longtail,
    shot_groups,
)
from ltkd_jax.data.pipeline import eval_batches, make_train_iterator, num_eval_batches
from ltkd_jax.data.records import RecordSplit
from ltkd_jax.data.sampling import (
    SAMPLERS,
    ReweightedIndexSequence,
    cbd_repeat_ratios,
    cbd_stream_pass,
    class_sampling_probs,
)
from ltkd_jax.data.sources import (
    DATASETS,
    IN_MEMORY,
    DataSplits,
    Split,
    load_dataset,
    split_options,
)
from ltkd_jax.data.task import (
    TaskSplits,
    input_stats,
    load_task,
    prepared_splits,
    source_fingerprint,
    task_splits,
)

__all__ = [
    "AUGMENTS",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IN_MEMORY",
    "DATASETS",
    "GROUP_NAMES",
    "PROFILES",
    "SAMPLERS",
    "ArraySplit",
    "DataSplits",
    "RecordSplit",
    "Split",
    "TaskSplits",
    "ReweightedIndexSequence",
    "augment_batch",
    "cbd_repeat_ratios",
    "cbd_stream_pass",
    "class_sampling_probs",
    "crop_flip",
    "dataset_stats",
    "draw_crop_flip",
    "eval_batches",
    "load_dataset",
    "input_stats",
    "load_digits",
    "load_task",
    "longtail_counts",
    "longtail_indices",
    "make_longtail",
    "make_train_iterator",
    "normalize",
    "num_eval_batches",
    "prepared_splits",
    "source_fingerprint",
    "random_resized_crop_flip",
    "resize_center_crop",
    "shot_groups",
    "split_options",
    "task_splits",
]
