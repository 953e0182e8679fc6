"""Splits too large for RAM: labels in memory, images read and decoded per example.

A `RecordSplit` wraps a random-access source (`tfds.data_source` over ArrayRecord, or
`tfds.testing.mock_data`) plus the record ids of its examples. Labels are read once without
decoding any image (`SkipDecoding` + `__getitems__`) and cached next to the data, so class
counts and shot groups (docs/evaluation.md#shot-groups) cost no decode. Images stay encoded
until a grain worker decodes and transforms them (`ltkd_jax.data.pipeline`).

`ArraySplit` (arrays.py) and `RecordSplit` share: `labels`, `num_classes`, `class_names`,
`image_shape`, `__len__`, `subset`, `class_counts`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from ltkd_jax.data import augment as augment_lib
from ltkd_jax.data import cache

_LABEL_CACHE = "ltkd_labels"  # Inside the prepared dataset dir, next to the records.
_LABEL_CHUNK = 4096


@dataclasses.dataclass(frozen=True, eq=False)
class RecordSplit:
    """One split read lazily: `source[record_ids[i]]` is example i (dict with an `image`).

    `image_size` is the square side the model sees (after crop / resize); `labels` are int32.
    Pickles small enough for grain workers: the source object pickles its file paths.
    """

    source: Sequence[dict[str, Any]]
    record_ids: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()
    image_size: int = 224
    fingerprint: str = ""  # Identity of the prepared source data ("" = the dataset name).

    def __post_init__(self):
        if self.labels.shape != self.record_ids.shape or self.labels.ndim != 1:
            raise ValueError(f"labels {self.labels.shape} do not match ids {self.record_ids.shape}")
        if self.image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {self.image_size}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(H, W, C) of the images the model sees."""
        return (self.image_size, self.image_size, 3)

    def subset(self, indices: np.ndarray) -> RecordSplit:
        """The examples at `indices`, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(
            self, record_ids=self.record_ids[indices], labels=self.labels[indices]
        )

    def class_counts(self) -> np.ndarray:
        """int64 [num_classes]: examples per class."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def read_image(self, i: int) -> bytes | np.ndarray:
        """Example i's image: encoded bytes (ArrayRecord) or a decoded uint8 array (mocks)."""
        return self.source[int(self.record_ids[i])]["image"]


def read_labels(source: Sequence[dict[str, Any]], chunk: int = _LABEL_CHUNK) -> np.ndarray:
    """int32 [len(source)] labels, read in chunks with `__getitems__` where it works."""
    labels = np.empty(len(source), dtype=np.int32)
    getitems = getattr(source, "__getitems__", None)
    for start in range(0, len(source), chunk):
        keys = list(range(start, min(start + chunk, len(source))))
        try:
            rows = getitems(keys) if getitems is not None else None
        except TypeError:  # tfds.testing.mock_data's __getitems__ is broken in 4.9.10.
            rows = None
        if rows is None:
            rows = [source[k] for k in keys]
        labels[start : start + len(keys)] = [int(r["label"]) for r in rows]
    return labels


def cached_labels(source: Sequence[dict[str, Any]], cache_dir: str | None, split: str):
    """`read_labels`, cached as `<cache_dir>/ltkd_labels/<split>.npy` when that is writable."""
    path = os.path.join(cache_dir, _LABEL_CACHE, f"{split}.npy") if cache_dir else None
    if path and os.path.exists(path):
        labels = np.load(path)
        if len(labels) == len(source):
            return labels
        logging.warning("Ignoring stale label cache %s", path)
    labels = read_labels(source)
    if path:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            cache.save_atomic(path, labels)
        except OSError as e:  # Read-only data_dir (e.g. a shared bucket): just do not cache.
            logging.info("Not caching labels in %s: %s", path, e)
    return labels


def tfds_source(
    name: str | None = None,
    *,
    split: str,
    data_dir: str | None = None,
    builder_dir: str | None = None,
) -> Sequence[dict[str, Any]]:
    """A tfds data source that returns *encoded* images where the source supports it.

    `builder_dir` opens a prepared dataset directory; otherwise `name` is looked up in
    `data_dir` (never downloaded or prepared: built-in builders need TensorFlow for that).
    `tfds.testing.mock_data` sources cannot skip decoding (they re-encode with TensorFlow),
    so they are read decoded.
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415 (heavy; only record splits need it)

    def open_source(decoders):
        if builder_dir is not None:
            return tfds.builder_from_directory(builder_dir).as_data_source(
                split=split, decoders=decoders
            )
        return tfds.data_source(
            name, split=split, data_dir=data_dir, download=False, decoders=decoders
        )

    source = open_source({"image": tfds.decode.SkipDecoding()})
    try:
        if len(source):
            source[0]  # noqa: B018 (probe: mocks fail here)
        return source
    except ModuleNotFoundError:
        return open_source(None)


def source_dir(source: Any) -> str | None:
    """The prepared dataset directory behind a tfds source (for caches), if any."""
    info = getattr(source, "dataset_info", None)
    path = getattr(info, "data_dir", None)
    return os.fspath(path) if path and os.path.isdir(os.fspath(path)) else None


def record_split(
    source: Sequence[dict[str, Any]],
    *,
    split: str,
    image_size: int,
    num_classes: int | None = None,
    class_names: Sequence[str] = (),
    fingerprint: str = "",
) -> RecordSplit:
    """A RecordSplit over every example of `source`, ordered by (label, record id)."""
    labels = cached_labels(source, source_dir(source), split)
    if num_classes is None:
        num_classes = len(class_names) if class_names else int(labels.max()) + 1
    # Label order, like the CIFAR splits: the long-tail generator cuts per class.
    order = np.argsort(labels, kind="stable")
    return RecordSplit(
        source=source,
        record_ids=order.astype(np.int64),
        labels=labels[order],
        num_classes=int(num_classes),
        class_names=tuple(class_names),
        image_size=int(image_size),
        fingerprint=fingerprint,
    )


def decode_to_array(
    split: RecordSplit, *, fraction: float = 1.0, num_threads: int | None = None
) -> np.ndarray:
    """uint8 [N, S, S, 3]: every image resized (shorter side) and centre-cropped, in RAM.

    `fraction` = 1 keeps the whole shorter side (small datasets: no border is lost).
    """
    import concurrent.futures  # noqa: PLC0415

    size = split.image_size

    def load(i: int) -> np.ndarray:
        return augment_lib.resize_center_crop(split.read_image(i), size, fraction)

    workers = num_threads or min(16, (os.cpu_count() or 1) * 2)
    out = np.empty((len(split), size, size, 3), dtype=np.uint8)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for i, image in enumerate(pool.map(load, range(len(split)), chunksize=64)):
            out[i] = image
    return out
