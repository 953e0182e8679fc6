"""CIFAR-10/100 prepared with TFDS (from the official download, a local copy of the official
pickle tarball, or a local zip of image folders) and decoded once into RAM, cached as `.npy`
next to the prepared files, each split saying where its images came from and whether they
are the original pixels (`stored_source`); and sklearn's digits, the small real dataset of
the quick-start and the tests."""

from __future__ import annotations

import os
import socket
import urllib.parse

import numpy as np
from absl import logging

from ltkd_jax.data import builders, cache
from ltkd_jax.data.arrays import ArraySplit

_CACHE_DIRNAME = "ltkd_decoded"  # Inside the TFDS version dir, so it lives and dies with it.
# The zips of `{train,test}/<class>/<image>` the README uses (../shared/data/), and the
# official lossless pickle tarballs.
ARCHIVE_NAMES = {"cifar10": "cifar10-jpeg.zip", "cifar100": "cifar100-png.zip"}
_TARBALL_HINT = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


def url_reachable(url: str, timeout: float = 5.0) -> bool:
    """True if the URL's host accepts a TCP connection (fails fast; TFDS retries ~3 min)."""
    host = urllib.parse.urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def prepare_cifar(
    name: str, *, data_dir: str | None = None, archive: str | None = None
) -> builders.LtkdCifar:
    """Returns the prepared `ltkd_cifar/<name>` builder, preparing it first if needed.

    TFDS writes into a temporary `incomplete.*` dir and renames it on success (and deletes it on
    an exception), so a failed preparation never leaves a dataset that a later run would trust.
    Not safe against concurrent preparation into one shared `data_dir`: prepare on one process
    first (or use per-host directories).
    """
    if archive is not None:
        archive = os.path.abspath(os.path.expanduser(os.fspath(archive)))
        if not os.path.isfile(archive):
            raise FileNotFoundError(
                f"{name} archive not found: {archive!r}. Pass an existing zip, e.g. "
                f"--config.data.archive=/path/to/shared/data/{ARCHIVE_NAMES[name]}, or the "
                f"official {_TARBALL_HINT[name]}."
            )
    if data_dir is not None:
        data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
    builder = builders.LtkdCifar(
        config=name, data_dir=data_dir, archive=archive, file_format="array_record"
    )
    if builder.is_prepared():
        _warn_if_other_source(builder, archive)
        return builder
    url = builder.builder_config.url
    if archive is None and not url_reachable(url):
        raise FileNotFoundError(
            f"{builders.BUILDER_NAME}/{name} is not prepared in {builder.data_dir_root!r} and the "
            f"official download {url} is unreachable (no network?). Pass a local archive, e.g. "
            f"--config.data.archive=/path/to/shared/data/{ARCHIVE_NAMES[name]}, or run once with "
            "network access."
        )
    try:
        builder.download_and_prepare()
    except OSError as e:
        if archive is not None or isinstance(e, FileNotFoundError):
            raise
        raise FileNotFoundError(
            f"downloading {url} failed ({e}). Pass a local archive, e.g. "
            f"--config.data.archive=/path/to/shared/data/{ARCHIVE_NAMES[name]}."
        ) from e
    return builder


def _warn_if_other_source(builder: builders.LtkdCifar, archive: str | None) -> None:
    """Warns when an archive was given but the prepared data came from another source."""
    metadata = builder.info.metadata or {}
    source = metadata.get("source", "unknown")
    if archive is not None and source != f"archive:{os.path.basename(archive)}":
        logging.warning(
            "Using %s prepared from %s, not from %s. Delete %s to re-prepare from the archive.",
            builder.info.full_name,
            source,
            archive,
            builder.data_dir,
        )


def stored_source(builder: builders.LtkdCifar) -> dict:
    """Where the prepared images came from and whether they are the original pixels:
    {"source": "archive:<file>" | "download:<url>", "encoding": "png" | "jpeg" | "unknown",
    "lossless": bool | None}, the encoding read off one stored image (data prepared by any
    version says it)."""
    import tensorflow_datasets as tfds  # Heavy import; only CIFAR needs it.

    records = tfds.data_source(
        f"{builders.BUILDER_NAME}/{builder.builder_config.name}",
        split="test",
        data_dir=builder.data_dir_root,
        download=False,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    encoding = builders.image_encoding(records[0]["image"])
    return {
        "source": (builder.info.metadata or {}).get("source", "unknown"),
        "encoding": encoding,
        "lossless": builders.LOSSLESS.get(encoding),
    }


def read_split(builder: builders.LtkdCifar, split: str) -> ArraySplit:
    """Decodes one prepared split into RAM, ordered by (label, id); cached as .npy."""
    names = tuple(builder.info.features["label"].names)
    source = stored_source(builder)
    num_examples = builder.info.splits[split].num_examples
    cache_dir = os.path.join(builder.data_dir, _CACHE_DIRNAME)
    paths = [os.path.join(cache_dir, f"{split}_{k}.npy") for k in ("labels", "images")]
    if all(os.path.exists(p) for p in paths):
        labels, images = (np.load(p) for p in paths)
        if len(labels) == len(images) == num_examples:
            return ArraySplit(images, labels, len(names), names, data_source=source)
        logging.warning("Ignoring stale decoded cache %s", cache_dir)
    images, labels = decode_split(builder, split)
    os.makedirs(cache_dir, exist_ok=True)
    for path, array in zip(paths, (labels, images), strict=True):
        cache.save_atomic(path, array)
    return ArraySplit(images, labels, len(names), names, data_source=source)


def decode_split(
    builder: builders.LtkdCifar, split: str, chunk: int = 10_000
) -> tuple[np.ndarray, np.ndarray]:
    """Reads a split with `tfds.data_source` -> (uint8 images, int32 labels) by (label, id).

    ArrayRecord order is a hash of the generator keys, so the original order is restored from
    the stored within-class `id`.
    """
    import tensorflow_datasets as tfds  # Heavy import; only CIFAR needs it.

    source = tfds.data_source(
        f"{builders.BUILDER_NAME}/{builder.builder_config.name}",
        split=split,
        data_dir=builder.data_dir_root,
        download=False,
    )
    images, labels, ids = [], [], []
    for start in range(0, len(source), chunk):
        # `__getitems__` reads a batch of records at once (much faster than indexing one by one).
        rows = source.__getitems__(list(range(start, min(start + chunk, len(source)))))
        images.append(np.stack([r["image"] for r in rows]))
        labels.append(np.fromiter((r["label"] for r in rows), np.int32, len(rows)))
        ids.append(np.fromiter((r["id"] for r in rows), np.int64, len(rows)))
    images, labels, ids = np.concatenate(images), np.concatenate(labels), np.concatenate(ids)
    order = np.lexsort((ids, labels))
    return np.ascontiguousarray(images[order]), labels[order]


# --------------------------------------------------------------------------------------------
# sklearn digits (offline quick-start)
# --------------------------------------------------------------------------------------------


def load_digits(test_fraction: float = 1 / 3, seed: int = 0) -> tuple[ArraySplit, ArraySplit]:
    """sklearn's 8x8 digits as uint8 [N, 8, 8, 1], split per class (seeded), no files written.

    Each class puts round(n_c * test_fraction) of its images in test; both splits are ordered
    by (label, original index), like the CIFAR splits.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    data = sk_load_digits()
    # Pixel values are 0..16; scale to the 0..255 range the uint8 pipeline expects.
    images = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = data.target.astype(np.int32)
    rng = np.random.RandomState(seed)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        n_test = int(round(len(idx) * test_fraction))
        chosen = np.zeros(len(idx), bool)
        chosen[rng.permutation(len(idx))[:n_test]] = True
        test_idx.append(idx[chosen])
        train_idx.append(idx[~chosen])
    names = tuple(str(c) for c in range(10))
    source = {"source": "sklearn.datasets.load_digits", "encoding": "array", "lossless": True}
    full = ArraySplit(images, labels, 10, names, data_source=source)
    return full.subset(np.concatenate(train_idx)), full.subset(np.concatenate(test_idx))
