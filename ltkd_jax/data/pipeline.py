"""grain input pipelines: re-weighted, augmented, per-process train batches and padded eval batches.

Train: `MapDataset.source(ReweightedIndexSequence)` -> batch (global) -> this process's slice
-> gather from RAM -> seeded batch augmentation -> IterDataset (+ prefetch). Every stage is a
function of the element index, so `get_state()` is a small dict and resuming replays the same
batches (style.md 2.d). Augmentation draws its parameters for the whole *global* batch and
keeps this process's slice, so N processes together produce exactly the 1-process batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import grain
import numpy as np

from ltkd_jax.data import augment as augment_lib
from ltkd_jax.data.sampling import ReweightedIndexSequence
from ltkd_jax.data.sources import ArraySplit

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


class _AugmentLocal:
    """Random map: augments this process's slice with parameters drawn for the global batch."""

    def __init__(self, kind: str, global_batch_size: int, local: slice, pad: int = 4):
        if kind not in augment_lib.AUGMENTS:
            raise ValueError(
                f"unknown augmentation {kind!r}; choose one of {augment_lib.AUGMENTS}."
            )
        self.kind, self.pad = kind, pad
        self.global_batch_size, self.local = global_batch_size, local

    def __call__(self, batch: dict[str, np.ndarray], rng: np.random.Generator):
        if self.kind == "none":
            return batch
        params = augment_lib.draw_crop_flip(rng, self.global_batch_size, self.pad)
        rows, cols, flips = (p[self.local] for p in params)
        image = augment_lib.crop_flip(batch["image"], rows, cols, flips, pad=self.pad)
        return {"image": image, "label": batch["label"]}


def _to_numpy(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copies mp_prefetch's shared-memory arrays into plain arrays.

    Their shared memory is then released at once instead of by `SharedMemoryArray.__del__`,
    which leaks segments and prints tracebacks when batches are still alive at exit.
    """
    return {k: np.array(v) for k, v in batch.items()}


def make_train_iterator(
    split: ArraySplit,
    *,
    global_batch_size: int,
    sampler: str,
    seed: int,
    num_epochs: int,
    augment: str = "cifar",
    process_index: int = 0,
    process_count: int = 1,
    num_workers: int = 0,
) -> tuple[grain.DatasetIterator, int]:
    """(iterator, steps_per_epoch) over `num_epochs` epochs of re-weighted, augmented batches.

    steps_per_epoch = len(split) // global_batch_size (remainder dropped, so the jitted step sees
    one shape); each epoch draws steps_per_epoch * global_batch_size indices. Yields
    {'image': uint8 [local_b, H, W, C], 'label': int32 [local_b]}, local_b = global / processes.
    The iterator supports get_state()/set_state() (and grain.checkpoint.CheckpointSave/Restore).
    Samplers: methods.md 1; augmentation 'cifar' = methods.md 2.1 (pad 4, crop, flip). With
    num_workers > 0 each worker process gets its own copy of the in-RAM arrays.
    """
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    local = process_slice(global_batch_size, process_index, process_count)
    steps_per_epoch = len(split) // global_batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"global batch size {global_batch_size} exceeds the {len(split)} training examples"
        )
    indices = ReweightedIndexSequence(
        split.labels,
        split.num_classes,
        sampler=sampler,
        seed=seed,
        epoch_len=steps_per_epoch * global_batch_size,
        num_epochs=num_epochs,
    )
    ds = (
        grain.MapDataset.source(indices)
        .batch(global_batch_size, drop_remainder=True)
        .map(_GatherLocal(split.images, split.labels, local))
        .random_map(_AugmentLocal(augment, global_batch_size, local), seed=_augment_seed(seed))
    )
    if num_workers > 0:
        # mp_prefetch reads absl flags: call it under app.run (or FLAGS.mark_as_parsed()).
        it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers, per_worker_buffer_size=2)
        ).map(_to_numpy)
    else:
        it_ds = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=_PREFETCH_THREADS, prefetch_buffer_size=_PREFETCH_BATCHES)
        )
    return iter(it_ds), steps_per_epoch


def num_eval_batches(n: int, batch_size: int, process_count: int = 1) -> int:
    """Batches each process yields to cover n examples with global batches of batch_size."""
    process_slice(batch_size, 0, process_count)  # Validates divisibility.
    return -(-n // batch_size)


def eval_batches(
    split: ArraySplit, *, batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[dict[str, np.ndarray]]:
    """Deterministic, padded eval batches; every example counts exactly once over processes.

    `batch_size` is the *global* batch (as in make_train_iterator); each process yields
    `num_eval_batches(...)` batches of batch_size // process_count examples: its contiguous
    slice of each global batch. Padding (the tail of the last global batch) repeats example 0
    with mask False. Yields {'image': uint8, 'label': int32, 'mask': bool}.
    """
    local = process_slice(batch_size, process_index, process_count)
    n = len(split)
    offsets = np.arange(local.start, local.stop)
    for j in range(num_eval_batches(n, batch_size, process_count)):
        idx = j * batch_size + offsets
        mask = idx < n
        idx = np.where(mask, idx, 0)
        yield {
            "image": split.images[idx],
            "label": split.labels[idx].astype(np.int32),
            "mask": mask,
        }
