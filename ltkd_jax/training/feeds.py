"""How training batches reach the step: one protocol, two feeds.

A `Feed` owns how a chunk of steps runs. `compile(step)` takes the pure step
`step(state, teachers, batch, ctx) -> (state, metrics)` and returns
`run(state, teachers, ctx, t0, t1) -> (state, [t1 - t0] stacked metrics)`, global steps
t0 .. t1 - 1; `checkpoint_item(t)` is what a checkpoint stores as its `data` item, so a
resumed run continues from the same batch.

- `DeviceFeed` (in-RAM splits, `data.device.supports`): the split lives on the devices; per
  chunk the host sends only the plan (indices and augmentation draws, a few KB). On
  accelerators the chunk is one jitted `lax.scan` (`steps.train_chunk`); on the CPU, where
  XLA runs a step inside a loop 2.6-3x slower than on its own
  (results/device_resident_cpu.md) and Python's per-step dispatch costs nothing, it is one
  jitted call per step (`steps.train_planned_step`). The backend decides.
- `HostFeed` (record splits, per-example augmentation, colour jitter): grain batches, placed
  on the devices `PREFETCH_BATCHES` ahead of the step so host work and step overlap.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from ltkd_jax.data import augment, device, pipeline, task
from ltkd_jax.data.sources import Split
from ltkd_jax.training import progress, sharding, steps

# Device batches queued ahead of the step on the host path: two keep the next transfer in
# flight while the step runs, without holding much device memory.
PREFETCH_BATCHES = 2
# Tests and the benchmark set this to time the accelerators' scanned form on the CPU.
SCAN_ON_CPU = False

StepFn = Callable[..., tuple]  # (state, teachers, batch, ctx) -> (state, metrics)
ChunkFn = Callable[..., tuple]  # (state, teachers, ctx, t0, t1) -> (state, stacked metrics)


class Feed(Protocol):
    """What the trainer asks of a feed (see the module docstring)."""

    description: str  # for the start-of-run log line
    chunk_steps: int  # steps per chunk; 0 = a whole epoch

    def compile(self, step: StepFn, compiler_options: dict | None) -> ChunkFn: ...

    def checkpoint_item(self, next_step: int) -> Any: ...


def scans_steps() -> bool:
    """Whether a device-resident chunk is one `lax.scan` (accelerators) or a jitted call per
    step (the CPU; see the module docstring)."""
    return jax.default_backend() != "cpu" or SCAN_ON_CPU


def _jit(fn: Callable, mesh, compiler_options: dict | None) -> Callable:
    """The state (argument 0) is donated; state and metrics come back replicated."""
    repl = sharding.replicated(mesh)
    return jax.jit(
        fn, donate_argnums=(0,), out_shardings=(repl, repl), compiler_options=compiler_options
    )


class DeviceFeed:
    """The training split uploaded once; batch plans drawn per chunk.

    With several `seeds` (a cohort's `per_seed` data), every step builds one batch per seed,
    each exactly the batch a run with that seed gets: batch arrays gain a leading [D] axis.
    """

    description = "on the device"

    def __init__(
        self,
        split: Split,
        config: ml_collections.ConfigDict,
        mesh,
        seeds: tuple[int, ...] | None = None,
    ):
        self.mesh = mesh
        self.batch_size = config.batch_size
        self.seeds = tuple(seeds) if seeds else (config.seed,)
        self.augment = train_augment(config, split)
        self.chunk_steps = config.scan_steps
        self.sequences = [
            pipeline.index_sequence(
                split, config.batch_size, config.data.sampler, seed, config.num_epochs
            )
            for seed in self.seeds
        ]
        self.data = device.upload(split.images, split.labels, mesh)
        self.position = device.StepPosition()

    def plan(self, t0: int, t1: int) -> dict:
        """[t1 - t0, B] device arrays ([t1 - t0, D, B] with D seeds): the indices and crops of
        global batches t0 .. t1 - 1."""
        plans = [
            device.plan_batches(
                sequence, t0, t1, batch_size=self.batch_size, seed=seed, augment=self.augment
            )
            for sequence, seed in zip(self.sequences, self.seeds, strict=True)
        ]
        return device.stack_plans(plans).to_device(self.mesh)

    def batch_sharding(self):
        """The sharding of a built batch: split along its batch axis (after the seed axis)."""
        leading = (None,) if len(self.seeds) > 1 else ()
        return sharding.data_sharded(self.mesh, leading)

    def compile(self, step: StepFn, compiler_options: dict | None) -> ChunkFn:
        batch_sharding = self.batch_sharding()
        if scans_steps():
            chunk = functools.partial(steps.train_chunk, step=step, batch_sharding=batch_sharding)
            p_chunk = _jit(chunk, self.mesh, compiler_options)
            return lambda state, teachers, ctx, t0, t1: p_chunk(
                state, teachers, self.data, self.plan(t0, t1), ctx
            )
        one = functools.partial(steps.train_planned_step, step=step, batch_sharding=batch_sharding)
        p_one = _jit(one, self.mesh, compiler_options)

        def run(state, teachers, ctx, t0, t1):
            plan, outputs = self.plan(t0, t1), []
            for i in range(t1 - t0):  # dispatched asynchronously: no host sync in between
                state, step_metrics = p_one(state, teachers, self.data, plan, np.int32(i), ctx)
                outputs.append(step_metrics)
            return state, progress.stack(outputs)

        return run

    def checkpoint_item(self, next_step: int) -> device.StepPosition:
        self.position.next_batch = next_step
        return self.position


class HostFeed:
    """grain batches of this process, assembled into global device arrays ahead of use."""

    description = "by grain on the host"

    def __init__(self, iterator: grain.DatasetIterator, mesh, chunk_steps: int):
        self.iterator, self.mesh, self.chunk_steps = iterator, mesh, chunk_steps

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

    def compile(self, step: StepFn, compiler_options: dict | None) -> ChunkFn:
        p_step = _jit(step, self.mesh, compiler_options)

        def run(state, teachers, ctx, t0, t1):
            outputs = []
            for batch in self.batches(t1 - t0):
                state, step_metrics = p_step(state, teachers, batch, ctx)
                outputs.append(step_metrics)
            return state, progress.stack(outputs)

        return run

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


def make_feed(
    config: ml_collections.ConfigDict,
    train_split: Split,
    mesh,
    seeds: tuple[int, ...] | None = None,
) -> tuple[Feed, int]:
    """(feed, uncapped steps per epoch): on the device when the split allows it; `seeds`
    (device feed only) draws one batch per seed at every step."""
    task.check_batch_fits(config.batch_size, len(train_split), f"of {config.data.name}")
    steps_per_epoch = len(train_split) // config.batch_size
    if config.data.augment == "auto":
        logging.info(
            "data.augment=auto: %s augmentation for %d px images (cifar up to %d px)",
            train_augment(config, train_split),
            train_split.image_shape[0],
            augment.AUTO_CIFAR_MAX_SIZE,
        )
    if uses_device(config, train_split):
        return DeviceFeed(train_split, config, mesh, seeds), steps_per_epoch
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
    return HostFeed(iterator, mesh, config.log_every_steps), steps_per_epoch
