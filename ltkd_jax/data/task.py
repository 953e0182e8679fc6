"""From a dataset's splits to the training task: the long-tailed cut, the validation split,
the checks that must pass before training, and the shot groups (docs/own_data.md).

`load_task(config.data)` is what every stage calls: the dataset's splits, prepared once per
process (`prepared_splits`), cut by `task_splits`. Everything it decides is also returned as
`info`, which goes into the run's `task.json` (class names, the data fingerprint, the
shot-group thresholds, which split selects the best checkpoint).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from ltkd_jax.data import augment, longtail, sources
from ltkd_jax.data.sources import DataSplits, Split
from ltkd_jax.errors import UserError

# An evaluated split whose largest class has more than this many times the images of its
# smallest is called imbalanced in the logs (top-1 then favours the head classes).
IMBALANCED_TEST_RATIO = 1.5
# How classes are grouped for the many / medium / few report (docs/evaluation.md).
EVAL_GROUPS = ("shot", "tail33")


@dataclasses.dataclass(frozen=True)
class TaskSplits:
    """The splits a run trains and evaluates on, and its facts for `task.json`."""

    train: Split
    test: Split
    val: Split | None
    class_counts: np.ndarray  # int64 [C] training images per class
    class_groups: np.ndarray  # int32 [C] 0 many, 1 medium, 2 few
    info: dict[str, Any]


def task_splits(splits: DataSplits, d: Any) -> TaskSplits:
    """Applies `config.data` (d) to the loaded splits, in this order:

    1. the long-tailed cut (`imbalance_factor`; refused on an already imbalanced split);
    2. validation: the dataset's val split, else a stratified `val_fraction` of train, else
       none (the best checkpoint is then chosen on test, as in the CIFAR-LT literature);
    3. an error naming every class left without training images;
    4. shot groups: the configured thresholds; for folders, when they leave a group empty,
       thresholds that give three non-empty groups (`longtail.tercile_thresholds`).
    """
    train = longtail.make_longtail(
        splits.train, d.imbalance_factor, profile=d.profile, seed=d.lt_seed
    )
    val, fraction = splits.val, float(d.get("val_fraction", 0.0))
    selected_on = "val" if val is not None else "test"
    if val is not None and fraction > 0:
        logging.warning("The data has a val split; data.val_fraction=%g is not used.", fraction)
    elif fraction > 0:
        train, val = longtail.stratified_holdout(train, fraction, seed=d.lt_seed)
        selected_on = f"val ({fraction:g} of train)"
    longtail.check_classes_present(train)
    counts = train.class_counts()
    many, few, derived = longtail.shot_thresholds(
        counts, d.many_threshold, d.few_threshold, derive=d.name == "folder"
    )
    groups = longtail.shot_groups(counts, many, few)
    if d.get("eval_groups", "shot") == "tail33":
        groups = longtail.tail33_groups(counts)
    sizes = np.bincount(groups, minlength=3)
    logging.info(
        "Shot groups by training images: many > %d, few < %d: %d / %d / %d classes%s",
        many,
        few,
        *sizes,
        " (derived from the class counts: the configured thresholds "
        f"{d.many_threshold} / {d.few_threshold} leave a group empty)"
        if derived
        else "",
    )
    test_counts = splits.test.class_counts()
    present = test_counts[test_counts > 0]
    if present.max() > IMBALANCED_TEST_RATIO * present.min():
        logging.info(
            "The test split is imbalanced (%d to %d images per class): top-1 favours the head "
            "classes; mean-class (mean per-class accuracy) is the balanced metric.",
            present.max(),
            present.min(),
        )
    logging.info(
        "Best checkpoint chosen on %s%s",
        selected_on,
        f" ({len(val)} images)" if val is not None else " (no val split; see data.val_fraction)",
    )
    info = {
        "class_names": [longtail.class_name(train, c) for c in range(train.num_classes)],
        "data_fingerprint": train.fingerprint,
        # CIFAR and digits: where the images came from, lossless or not (ArraySplit).
        "data_source": getattr(train, "data_source", {}),
        "shot_thresholds": {"many": many, "few": few, "derived": derived},
        "selected_on": selected_on,
        "num_val": 0 if val is None else len(val),
        "test_class_counts": test_counts,
    }
    return TaskSplits(train, splits.test, val, counts, groups, info)


@functools.lru_cache(maxsize=8)
def _cached_splits(name: str, data_dir: str, archive: str, options: tuple) -> DataSplits:
    return sources.load_dataset(
        name, data_dir=data_dir or None, archive=archive or None, **dict(options)
    )


def prepared_splits(d: Any) -> DataSplits:
    """The dataset of `config.data` (d), prepared once per process: on several hosts process
    0 prepares it while the others wait."""
    key = (d.name, d.data_dir, d.archive, tuple(sorted(sources.split_options(d).items())))
    if jax.process_count() > 1 and jax.process_index() != 0:
        multihost_utils.sync_global_devices("ltkd_jax:data_prepared")
        return _cached_splits(*key)
    splits = _cached_splits(*key)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("ltkd_jax:data_prepared")
    return splits


def load_task(d: Any) -> TaskSplits:
    """The run's task from `config.data` (d): `task_splits` of the prepared dataset."""
    return task_splits(prepared_splits(d), d)


def input_stats(d: Any, channels: int) -> tuple[tuple, tuple]:
    """(mean, std) the model normalises its uint8 input with: `config.data.norm_stats`
    (`augment.NORM_STATS`; auto, and runs recorded before the field, the dataset's); identity
    when `config.data.normalize` is off (pixels in [0, 1], as CBD feeds them)."""
    if not d.normalize:
        return (0.0,) * channels, (1.0,) * channels
    name = d.get("norm_stats", "auto")
    mean, std = augment.dataset_stats(d.name) if name == "auto" else augment.NORM_STATS[name]
    if len(mean) != channels:
        raise ValueError(
            f"config.data.norm_stats={name!r} has {len(mean)} channels, the images {channels}; "
            "pick statistics of this data (auto: the dataset's)"
        )
    return mean, std


def check_batch_fits(batch_size: int, num_images: int, where: str) -> None:
    """An epoch is `num_images // batch_size` steps: a batch larger than the training set
    would make it none (UserError naming config.batch_size and the fix)."""
    if batch_size > num_images:
        raise UserError(
            f"config.batch_size={batch_size} exceeds the {num_images} training images {where}; "
            f"pass --config.batch_size={max(1, num_images // 4)} or another value up to "
            f"{num_images}"
        )
