"""The data a run trains and evaluates on: the dataset's splits, prepared once per process,
cut to the run's long-tailed task (`data.task_splits`)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
from jax.experimental import multihost_utils

from ltkd_jax import data, methods


@functools.lru_cache(maxsize=8)
def _cached_splits(name: str, data_dir: str, archive: str, options: tuple):
    return data.load_dataset(
        name, data_dir=data_dir or None, archive=archive or None, **dict(options)
    )


def load_splits(d: ml_collections.ConfigDict) -> data.DataSplits:
    """The dataset's splits, prepared once: on several hosts process 0 prepares, the others wait."""
    key = (d.name, d.data_dir, d.archive, tuple(sorted(data.split_options(d).items())))
    if jax.process_count() > 1 and jax.process_index() != 0:
        multihost_utils.sync_global_devices("ltkd_jax:data_prepared")
        return _cached_splits(*key)
    splits = _cached_splits(*key)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("ltkd_jax:data_prepared")
    return splits


class TaskData(NamedTuple):
    """What a run trains and evaluates on (`data.task_splits`), with its `methods.Task`."""

    train: data.Split
    test: data.Split
    task: methods.Task
    val: data.Split | None  # selects the best checkpoint when present
    info: dict  # class names, data fingerprint, shot thresholds, ...: goes into task.json


def load_task_data(config: ml_collections.ConfigDict) -> TaskData:
    """The run's splits and task (`data.task_splits`: long-tail cut, val, checks, groups)."""
    d = config.data
    t = data.task_splits(load_splits(d), d)
    task = methods.Task(class_counts=t.class_counts, class_groups=t.class_groups, dataset=d.name)
    return TaskData(t.train, t.test, task, t.val, t.info)


def load_task(config: ml_collections.ConfigDict):
    """(long-tailed train split, test split, `methods.Task`)."""
    t = load_task_data(config)
    return t.train, t.test, t.task


def input_stats(config: ml_collections.ConfigDict, image_shape: tuple) -> tuple[tuple, tuple]:
    """(mean, std) the step normalises with; identity when config.data.normalize is off."""
    if config.data.normalize:
        return data.dataset_stats(config.data.name)
    channels = image_shape[-1]
    return (0.0,) * channels, (1.0,) * channels


def preprocess(images: jnp.ndarray, mean, std) -> jnp.ndarray:
    """uint8 NHWC -> normalised float32, on device (a quarter of the bytes cross to it)."""
    return data.normalize(images, mean, std)
