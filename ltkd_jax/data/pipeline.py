"""grain input pipelines: re-weighted, augmented, per-process train batches and padded eval batches.

Two paths, chosen by the split and the augmentation:

* in-RAM CIFAR-style (`ArraySplit` with 'cifar'/'none'): `MapDataset.source(
  ReweightedIndexSequence)` -> batch (global) -> this process's slice -> gather from RAM ->
  seeded batch augmentation. Augmentation (crop/flip, then the optional colour jitter +
  grayscale) draws its parameters for the whole *global* batch and keeps this process's slice.
* per example (`RecordSplit`, or 'imagenet' augmentation): `MapDataset.range` over this
  process's positions -> read (+ decode) one example -> transform with a generator seeded by
  (seed, global position) -> batch. Decoding and augmentation run in reader threads and, with
  `num_workers`, in grain worker processes (`mp_prefetch`). Each process reads only the
  examples of its own slice of every global batch.

Either way every stage is a function of the element index, so N processes together produce
exactly the 1-process batch, `get_state()` is a small dict, and resuming replays the same
batches (docs/sampling.md#determinism-and-resume).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import NamedTuple

import grain
import numpy as np

from ltkd_jax.data import augment as augment_lib
from ltkd_jax.data.arrays import ArraySplit
from ltkd_jax.data.records import RecordSplit
from ltkd_jax.data.sampling import ReweightedIndexSequence
from ltkd_jax.data.sources import Split

# Threads for the in-process prefetch: gather + augmentation is numpy work that mostly releases
# the GIL, and a few batches of buffer hide its latency behind the train step.
_PREFETCH_THREADS = 2
_PREFETCH_BATCHES = 4


def process_slice(global_batch_size: int, process_index: int, process_count: int) -> slice:
    """This process's contiguous slice of a global batch."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if global_batch_size % process_count:
        raise ValueError(
            f"global batch size {global_batch_size} is not divisible by {process_count} processes"
        )
    local = global_batch_size // process_count
    return slice(process_index * local, (process_index + 1) * local)


def _augment_seed(seed: int) -> int:
    """A 32-bit seed for the augmentation stream, independent of the sampler's (seed, epoch)."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])


class _GatherLocal:
    """Map: a global batch of dataset indices -> this process's images and labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, local: slice):
        self.images, self.labels, self.local = images, labels, local

    def __call__(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        idx = np.asarray(indices)[self.local]
        return {"image": self.images[idx], "label": self.labels[idx].astype(np.int32)}


class BatchAugment(NamedTuple):
    """The augmentation draws of one global batch."""

    crop: tuple[np.ndarray, np.ndarray, np.ndarray]  # rows, cols, flips, each [B]
    color: augment_lib.ColorParams | None  # colour jitter + grayscale, when enabled


def draw_batch_augment(
    seed: int, batch_index: int, global_batch_size: int, pad: int, color_jitter: bool = False
) -> BatchAugment:
    """Pad-crop-flip (and colour) draws of global batch `batch_index`, from a generator seeded
    by (seed, batch_index): the same on every process, on the grain and on the device path."""
    rng = np.random.default_rng([_augment_seed(seed), batch_index])
    crop = augment_lib.draw_crop_flip(rng, global_batch_size, pad)
    # Drawn after crop/flip: the stream without colour jitter is unchanged.
    color = augment_lib.draw_color_params(rng, global_batch_size) if color_jitter else None
    return BatchAugment(crop, color)


class _AugmentLocal:
    """Map with index: augments this process's slice of global batch `index` with the draws
    of `draw_batch_augment` for the whole global batch."""

    def __init__(
        self,
        kind: str,
        global_batch_size: int,
        local: slice,
        seed: int,
        pad: int = 4,
        color_jitter: bool = False,
    ):
        if kind not in augment_lib.AUGMENTS:
            raise ValueError(
                f"unknown augmentation {kind!r}; choose one of {augment_lib.AUGMENTS}."
            )
        self.kind, self.pad, self.color_jitter, self.seed = kind, pad, color_jitter, seed
        self.global_batch_size, self.local = global_batch_size, local

    def __call__(self, index: int, batch: dict[str, np.ndarray]):
        image = batch["image"]
        if self.kind == "none" and not self.color_jitter:
            return batch
        draws = draw_batch_augment(
            self.seed, index, self.global_batch_size, self.pad, self.color_jitter
        )
        if self.kind == "cifar":
            rows, cols, flips = (p[self.local] for p in draws.crop)
            image = augment_lib.crop_flip(image, rows, cols, flips, pad=self.pad)
        if draws.color is not None:
            image = augment_lib.color_augment(image, draws.color.take(self.local))
        return {"image": image, "label": batch["label"]}


def _to_numpy(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copies mp_prefetch's shared-memory arrays into plain arrays.

    Their shared memory is then released at once instead of by `SharedMemoryArray.__del__`,
    which leaks segments and prints tracebacks when batches are still alive at exit.
    """
    return {k: np.array(v) for k, v in batch.items()}


def make_train_iterator(
    split: Split,
    *,
    global_batch_size: int,
    sampler: str,
    seed: int,
    num_epochs: int,
    augment: str = "cifar",
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
    crop_min_area: float = augment_lib.DEFAULT_MIN_AREA,
    num_threads: int | None = None,
    color_jitter: bool = False,
) -> tuple[grain.DatasetIterator, int]:
    """(iterator, steps_per_epoch) over `num_epochs` epochs of re-weighted, augmented batches.

    steps_per_epoch = len(split) // global_batch_size (remainder dropped, so the jitted step sees
    one shape); each epoch draws steps_per_epoch * global_batch_size indices. Yields
    {'image': uint8 [local_b, H, W, C], 'label': int32 [local_b]}, local_b = global / processes,
    H = W = the split's image size. The iterator supports get_state()/set_state() (and
    grain.checkpoint.CheckpointSave/Restore). Samplers: docs/sampling.md. Augmentation
    (docs/data.md#augmentation): 'cifar' = pad 4, crop, flip; 'imagenet' = random-resized
    crop (area [crop_min_area, 1], ratio [3/4, 4/3]) + flip; 'none' =
    resize + centre crop for record splits, identity in RAM. `num_workers` > 0 decodes and
    augments in that many grain worker processes (each gets its own copy of in-RAM arrays);
    `num_threads` reader threads per process (default 2, or 1 per worker). `color_jitter`
    adds, after the geometric augmentation, SimCLR v2 colour jitter (strength 1, p = 0.8) +
    random grayscale (p = 0.2) (docs/data.md#colour-jitter), on both paths.
    """
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if augment not in augment_lib.AUGMENTS:
        raise ValueError(f"unknown augmentation {augment!r}; choose one of {augment_lib.AUGMENTS}.")
    if not 0 < crop_min_area <= 1:
        raise ValueError(f"crop_min_area must be in (0, 1], got {crop_min_area}")
    local = process_slice(global_batch_size, process_index, process_count)
    steps_per_epoch = len(split) // global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"global batch size {global_batch_size} exceeds the {len(split)} training examples"
        )
    indices = index_sequence(split, global_batch_size, sampler, seed, num_epochs)
    if isinstance(split, ArraySplit) and augment in ("cifar", "none"):
        ds = (
            grain.MapDataset.source(indices)
            .batch(global_batch_size, drop_remainder=True)
            .map(_GatherLocal(split.images, split.labels, local))
            .map_with_index(
                _AugmentLocal(augment, global_batch_size, local, seed, color_jitter=color_jitter)
            )
        )
    else:
        transform = TrainTransform(
            augment, split.image_shape[0], crop_min_area, _is_record(split), color_jitter
        )
        reader = _ExampleReader(split, indices, transform, global_batch_size, local, seed)
        n_local = len(indices) // global_batch_size * (local.stop - local.start)
        ds = grain.MapDataset.range(n_local).map(reader).batch(local.stop - local.start)
    return iter(_to_iter(ds, num_workers, num_threads)), steps_per_epoch


def index_sequence(
    split: Split, global_batch_size: int, sampler: str, seed: int, num_epochs: int
) -> ReweightedIndexSequence:
    """The dataset indices of every training batch: epochs of steps_per_epoch * batch draws."""
    return ReweightedIndexSequence(
        split.labels,
        split.num_classes,
        sampler=sampler,
        seed=seed,
        epoch_len=len(split) // global_batch_size * global_batch_size,
        num_epochs=num_epochs,
    )


def _is_record(split: Split) -> bool:
    return isinstance(split, RecordSplit)


def _to_iter(ds: grain.MapDataset, num_workers: int, num_threads: int | None) -> grain.IterDataset:
    """MapDataset of batches -> IterDataset with reader threads and optional worker processes."""
    if num_workers > 0:
        # mp_prefetch reads absl flags: call it under app.run (or FLAGS.mark_as_parsed()).
        it_ds = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=num_threads or 1, prefetch_buffer_size=2)
        )
        return it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2)
        ).map(_to_numpy)
    threads = num_threads or _PREFETCH_THREADS
    return ds.to_iter_dataset(
        grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, _PREFETCH_BATCHES))
    )


class TrainTransform:
    """One training image -> uint8 [size, size, 3] (picklable, for grain workers).

    `resize`: the input may have any size (record splits) and is first brought to size x size
    for 'cifar' / 'none'; in-RAM images already are. `color_jitter`: then SimCLR v2 colour
    jitter + grayscale (docs/data.md#colour-jitter), drawn from the same generator after the crop.
    """

    def __init__(
        self, kind: str, size: int, min_area: float, resize: bool, color_jitter: bool = False
    ):
        self.kind, self.size, self.min_area, self.resize = kind, size, min_area, resize
        self.color_jitter = color_jitter

    def __call__(self, image, rng: np.random.Generator) -> np.ndarray:
        image = self._geometric(image, rng)
        if self.color_jitter:
            image = augment_lib.random_color_augment(image[None], rng)[0]
        return image

    def _geometric(self, image, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "imagenet":
            return augment_lib.random_resized_crop_flip(image, rng, self.size, self.min_area)
        if self.resize:
            # 'none' evaluates-style (shorter side to size/0.875); 'cifar' keeps the whole side.
            fraction = augment_lib.CENTER_CROP_FRACTION if self.kind == "none" else 1.0
            image = augment_lib.resize_center_crop(image, self.size, fraction)
        image = np.asarray(image)
        if self.kind == "cifar":
            image = augment_lib.augment_batch(image[None], rng, "cifar")[0]
        return image


class EvalTransform:
    """One evaluation image -> uint8 [size, size, 3]: resize + centre crop (record splits)."""

    def __init__(self, size: int, resize: bool):
        self.size, self.resize = size, resize

    def __call__(self, image) -> np.ndarray:
        if not self.resize:
            return np.asarray(image)
        return augment_lib.resize_center_crop(image, self.size)


def _read(split: Split, i: int):
    return split.read_image(i) if isinstance(split, RecordSplit) else split.images[i]


def _global_position(j: int, global_batch_size: int, local: slice) -> int:
    """Position in the global stream of this process's j-th example."""
    local_b = local.stop - local.start
    return (j // local_b) * global_batch_size + local.start + j % local_b


class _ExampleReader:
    """Map: this process's j-th position -> one decoded, augmented training example."""

    def __init__(self, split, indices, transform, global_batch_size: int, local: slice, seed: int):
        self.split, self.indices, self.transform = split, indices, transform
        self.global_batch_size, self.local = global_batch_size, local
        self.seed = _augment_seed(seed)

    def __call__(self, j: int) -> dict[str, np.ndarray]:
        k = _global_position(int(j), self.global_batch_size, self.local)
        i = self.indices[k]
        # Seeded by the global position: the same draw on any number of processes or workers.
        rng = np.random.default_rng([self.seed, k])
        image = self.transform(_read(self.split, i), rng)
        return {"image": image, "label": np.int32(self.split.labels[i])}


def num_eval_batches(n: int, batch_size: int, process_count: int = 1) -> int:
    """Batches each process yields to cover n examples with global batches of batch_size."""
    process_slice(batch_size, 0, process_count)  # Validates divisibility.
    return -(-n // batch_size)


def eval_batches(
    split: Split,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic, padded eval batches; every example counts exactly once over processes.

    `batch_size` is the *global* batch (as in make_train_iterator); each process yields
    `num_eval_batches(...)` batches of batch_size // process_count examples: its contiguous
    slice of each global batch. Padding (the tail of the last global batch) repeats example 0
    with mask False. Yields {'image': uint8, 'label': int32, 'mask': bool}. Record splits are
    read, decoded and resized + centre-cropped in `num_threads` threads (default: the CPUs,
    at most 8), only for this process's slice.
    """
    local = process_slice(batch_size, process_index, process_count)
    n = len(split)
    nb = num_eval_batches(n, batch_size, process_count)
    if isinstance(split, RecordSplit):
        threads = num_threads or min(8, os.cpu_count() or 1)
        reader = _EvalReader(split, batch_size, local)
        ds = grain.MapDataset.range(nb * (local.stop - local.start)).map(reader)
        ds = ds.batch(local.stop - local.start).to_iter_dataset(
            grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)
        )
        yield from ds
        return
    offsets = np.arange(local.start, local.stop)
    for j in range(nb):
        idx = j * batch_size + offsets
        mask = idx < n
        idx = np.where(mask, idx, 0)
        yield {
            "image": split.images[idx],
            "label": split.labels[idx].astype(np.int32),
            "mask": mask,
        }


class _EvalReader:
    """Map: this process's j-th eval position -> {image, label, mask} (padding masked)."""

    def __init__(self, split: RecordSplit, batch_size: int, local: slice):
        self.split, self.batch_size, self.local = split, batch_size, local
        self.transform = EvalTransform(split.image_size, resize=True)

    def __call__(self, j: int) -> dict[str, np.ndarray]:
        k = _global_position(int(j), self.batch_size, self.local)
        mask = k < len(self.split)
        i = k if mask else 0  # Padding repeats example 0; the mask drops it.
        return {
            "image": self.transform(self.split.read_image(i)),
            "label": np.int32(self.split.labels[i]),
            "mask": np.bool_(mask),
        }
