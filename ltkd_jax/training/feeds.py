"""How training batches reach the step: on the device, or from the host through grain.

- `DeviceFeed` (in-RAM splits, `data.supports`): the split lives on the devices; per chunk
  of steps the host sends only the plan (indices and augmentation draws, a few KB) and the
  trainer runs the whole chunk in one jitted `lax.scan` (`steps.train_chunk`).
- `HostFeed` (record splits, per-example augmentation, colour jitter): grain batches,
  placed on the devices `PREFETCH_BATCHES` ahead of the step so the host work and the step
  overlap.

Both expose the object a checkpoint stores as its `data` item, so a resumed run continues
from the same batch.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import grain
import jax
import ml_collections
from absl import logging

from ltkd_jax.data import augment, device, pipeline
from ltkd_jax.data.sources import Split
from ltkd_jax.training import sharding

# Device batches queued ahead of the step on the host path: two keep the next transfer in
# flight while the step runs, without holding much device memory.
PREFETCH_BATCHES = 2


class DeviceFeed:
    """The training split uploaded once; batch plans drawn per chunk."""

    on_device = True

    def __init__(self, split: Split, config: ml_collections.ConfigDict, mesh):
        self.mesh = mesh
        self.batch_size = config.batch_size
        self.seed = config.seed
        self.augment = train_augment(config, split)
        self.sequence = pipeline.index_sequence(
            split, config.batch_size, config.data.sampler, config.seed, config.num_epochs
        )
        self.data = device.upload(split.images, split.labels, mesh)
        self.position = device.StepPosition()

    def plan(self, t0: int, t1: int) -> dict:
        """[t1 - t0, B] device arrays: the indices and crops of global batches t0 .. t1 - 1."""
        return device.plan_batches(
            self.sequence,
            t0,
            t1,
            batch_size=self.batch_size,
            seed=self.seed,
            augment=self.augment,
        ).to_device(self.mesh)

    def checkpoint_item(self, next_step: int) -> device.StepPosition:
        self.position.next_batch = next_step
        return self.position


class HostFeed:
    """grain batches of this process, assembled into global device arrays ahead of use."""

    on_device = False

    def __init__(self, iterator: grain.DatasetIterator, mesh):
        self.iterator, self.mesh = iterator, mesh

    def batches(self, count: int) -> Iterator[dict]:
        """The next `count` global batches, each put on the devices up to PREFETCH_BATCHES
        steps before it is used. Never reads past `count`, so the iterator stands exactly at
        the end of the chunk when a checkpoint saves its position."""
        queue: collections.deque = collections.deque()
        taken = 0
        while taken < count or queue:
            while taken < count and len(queue) < PREFETCH_BATCHES:
                queue.append(sharding.global_batch(self.mesh, next(self.iterator)))
                taken += 1
            yield queue.popleft()

    def checkpoint_item(self, next_step: int) -> grain.DatasetIterator:
        del next_step  # the iterator knows its position
        return self.iterator


def train_augment(config: ml_collections.ConfigDict, split: Split) -> str:
    """config.data.augment, `auto` resolved by the split's image size (`augment.resolve`)."""
    return augment.resolve(config.data.augment, split.image_shape[0])


def uses_device(config: ml_collections.ConfigDict, split: Split) -> bool:
    """The device path when the config allows it and the split and augmentation support it."""
    d = config.data
    augmentation = train_augment(config, split)
    return bool(d.device_resident) and device.supports(split, augmentation, d.color_jitter)


def make_feed(config: ml_collections.ConfigDict, train_split, mesh):
    """(feed, uncapped steps per epoch): on the device when the split allows it."""
    if config.batch_size > len(train_split):
        raise ValueError(
            f"config.batch_size={config.batch_size} exceeds the {len(train_split)} training "
            "images; lower it"
        )
    steps_per_epoch = len(train_split) // config.batch_size
    if config.data.augment == "auto":
        logging.info(
            "data.augment=auto: %s augmentation for %d px images (cifar up to %d px)",
            train_augment(config, train_split),
            train_split.image_shape[0],
            augment.AUTO_CIFAR_MAX_SIZE,
        )
    if uses_device(config, train_split):
        return DeviceFeed(train_split, config, mesh), steps_per_epoch
    iterator, _ = pipeline.make_train_iterator(
        train_split,
        global_batch_size=config.batch_size,
        sampler=config.data.sampler,
        seed=config.seed,
        num_epochs=config.num_epochs,
        augment=train_augment(config, train_split),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        num_workers=config.data.num_workers,
        crop_min_area=config.data.crop_min_area,
        color_jitter=config.data.color_jitter,
    )
    return HostFeed(iterator, mesh), steps_per_epoch
