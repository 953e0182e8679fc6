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
    2. shot groups, on the training counts before any validation holdout (so
       `val_fraction` never changes them): the configured thresholds; for folders, when they
       leave a group empty, thresholds that give three non-empty groups
       (`longtail.tercile_thresholds`);
    3. validation: the dataset's val split, else a stratified `val_fraction` of train, else
       none (the best checkpoint is then chosen on test, as in the CIFAR-LT literature);
    4. an error naming every class left without training images.
    """
    train = longtail.make_longtail(
        splits.train, d.imbalance_factor, profile=d.profile, seed=d.lt_seed
    )
    full_counts = train.class_counts()
    many, few, derived = longtail.shot_thresholds(
        full_counts, d.many_threshold, d.few_threshold, derive=d.name == "folder"
    )
    rule = group_rule(d, derived)
    if rule == "tail33":
        groups = longtail.tail33_groups(full_counts)
    else:
        groups = longtail.shot_groups(full_counts, many, few)
    val, fraction = splits.val, float(d.get("val_fraction", 0.0))
    selected_on = "val" if val is not None else "test"
    if val is not None and fraction > 0:
        logging.warning("The data has a val split; data.val_fraction=%g is not used.", fraction)
    elif fraction > 0:
        train, val = longtail.stratified_holdout(train, fraction, seed=d.lt_seed)
        selected_on = f"val ({fraction:g} of train)"
    longtail.check_classes_present(train)
    counts = train.class_counts()
    rules = {
        "tail33": "the top and bottom 33% of classes by training images",
        "derived": f"many > {many}, few < {few} training images, thresholds derived from the "
        f"class counts: the configured {d.many_threshold} / {d.few_threshold} leave a group "
        "empty",
        "configured": f"many > {many}, few < {few} training images, the configured thresholds",
    }
    logging.info(
        "Shot groups: %d / %d / %d classes many / medium / few (%s%s)",
        *np.bincount(groups, minlength=3),
        rules[rule],
        "; counted before the val holdout" if selected_on.startswith("val (") else "",
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
        "shot_thresholds": {"many": many, "few": few, "derived": derived, "rule": rule},
        "selected_on": selected_on,
        "num_val": 0 if val is None else len(val),
        "test_class_counts": test_counts,
    }
    return TaskSplits(train, splits.test, val, counts, groups, info)


def group_rule(d: Any, derived: bool) -> str:
    """Which rule grouped the classes: 'tail33', 'derived' or 'configured' thresholds."""
    if d.get("eval_groups", "shot") == "tail33":
        return "tail33"
    return "derived" if derived else "configured"


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
    """The run's task from `config.data` (d): `task_splits` of the prepared dataset, after
    the checks the file listing allows (`check_listing`)."""
    check_listing(d)
    return task_splits(prepared_splits(d), d)


def check_listing(d: Any) -> None:
    """A folder cut with `imbalance_factor > 1` must be balanced enough to cut
    (`longtail.check_cut_allowed`): checked on its file listing, before preparation decodes
    every image. (Layout errors, e.g. a test class missing from train, are found by the
    listing that starts preparation.) The usual `imb=1` run lists nothing here."""
    if d.name == "folder" and d.imbalance_factor != 1:
        source = sources.folder_source(d.archive, d.eval_split)
        longtail.check_cut_allowed(source.class_counts(), d.imbalance_factor)


def source_fingerprint(d: Any) -> str:
    """The `data_fingerprint` a run on `config.data` (d) will record, from file stats alone
    (no image decoded); '' for data identified by name only (CIFAR, digits, benchmarks)."""
    if d.name != "folder":
        return ""
    return sources.folder_source(d.archive, d.eval_split).fingerprint()


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
