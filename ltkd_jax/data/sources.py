"""Train/test splits: CIFAR-10/100 and sklearn digits decoded into RAM; ImageNet-LT, Places-LT,
iNaturalist 2018 and a user's image folders read per example (`records.RecordSplit`) or, when
small, decoded into RAM. `load_splits` dispatches on the dataset name (docs/data.md#datasets).

CIFAR-sized data fits in RAM (50k x 32x32x3 uint8 = 150 MB), so each split is decoded once from
the prepared ArrayRecord files and cached as `.npy` next to them; later loads take a fraction of
a second. Train images are ordered by (label, index within class) — the original
within-class order — which the LDAM-DRW long-tail generator needs
(docs/data.md#long-tailed-cifar-subsets).
"""

from __future__ import annotations

import dataclasses
import os
import socket
import urllib.parse
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from ltkd_jax.data import augment as augment_lib
from ltkd_jax.data import builders, cache, image_builders, records

DATASETS = ("cifar10", "cifar100", "digits", "imagenet_lt", "places_lt", "inat2018", "folder")
IN_MEMORY = ("auto", "yes", "no")
# `in_memory='auto'` decodes into RAM when all images at image_size take at most this much.
IN_MEMORY_AUTO_BYTES = 2 << 30
DEFAULT_IMAGE_SIZE = 224  # ImageNet-style datasets (docs/data.md#large-scale-benchmarks)
# A folder's validation split (it selects checkpoints) when it also has a test split.
VAL_SPLIT_NAMES = ("val", "validation")


@dataclasses.dataclass(frozen=True)
class ListBenchmark:
    """A benchmark defined by list files of `relative/path label` lines (docs/data.md#datasets)."""

    num_classes: int
    list_files: dict[str, str]  # split -> list file name (in data.list_dir)
    eval_split: str
    tfds_name: str | None = None  # TFDS's own builder, read when already prepared
    tfds_eval_split: str | None = None


BENCHMARKS = {
    # OLTR lists (Liu et al. 2019); paths relative to the ILSVRC-2012 root (train/, val/).
    "imagenet_lt": ListBenchmark(
        1000,
        {
            "train": "ImageNet_LT_train.txt",
            "validation": "ImageNet_LT_val.txt",
            "test": "ImageNet_LT_test.txt",
        },
        eval_split="test",
        tfds_name="imagenet_lt",
        tfds_eval_split="test",
    ),
    # OLTR lists; paths relative to the Places-365 root.
    "places_lt": ListBenchmark(
        365,
        {
            "train": "Places_LT_train.txt",
            "validation": "Places_LT_val.txt",
            "test": "Places_LT_test.txt",
        },
        eval_split="test",
    ),
    # classifier-balancing lists; iNat 2018 has no labelled test set: validation is the test.
    "inat2018": ListBenchmark(
        8142,
        {"train": "iNaturalist18_train.txt", "validation": "iNaturalist18_val.txt"},
        eval_split="validation",
        tfds_name="i_naturalist2018",
        tfds_eval_split="validation",
    ),
}
_CACHE_DIRNAME = "ltkd_decoded"  # Inside the TFDS version dir, so it lives and dies with it.
_ARCHIVE_HINT = {"cifar10": "cifar10-jpeg.zip", "cifar100": "cifar100-png.zip"}


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """One split in RAM: uint8 images [N, H, W, C] and int32 labels [N]."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()
    fingerprint: str = ""  # Identity of the prepared source data ("" = the dataset name).

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, H, W, C], got {self.images.dtype}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels {self.labels.shape} do not match {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(H, W, C) of the images the model sees."""
        return tuple(self.images.shape[1:])

    def subset(self, indices: np.ndarray) -> ArraySplit:
        """The examples at `indices`, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])

    def class_counts(self) -> np.ndarray:
        """int64 [num_classes]: examples per class."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)


Split = ArraySplit | records.RecordSplit


class DataSplits(NamedTuple):
    """A dataset's splits: `val` (None when the data has none) selects checkpoints."""

    train: Split
    test: Split
    val: Split | None = None


def split_options(data_config: Any) -> dict[str, Any]:
    """The `load_splits` keyword options held in `config.data` (see config_lib.base_config)."""
    return {
        "image_size": int(data_config.image_size),
        "in_memory": data_config.in_memory,
        "list_dir": data_config.list_dir,
        "on_corrupt": data_config.on_corrupt,
        "eval_split": data_config.eval_split,
    }


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    archive: str | None = None,
    image_size: int = 0,
    in_memory: str = "auto",
    list_dir: str = "",
    on_corrupt: str = "error",
    eval_split: str = "",
) -> DataSplits:
    """(train, test, val) splits for one of `DATASETS`.

    cifar10/cifar100 are prepared once (TF-free TFDS builder -> ArrayRecord under `data_dir`,
    default TFDS's `~/tensorflow_datasets`) from `archive`, a local zip such as
    `../shared/data/cifar100-png.zip`, or else from the official download; then read with
    `tfds.data_source` and decoded into RAM (cached as .npy). digits (sklearn's 8x8 digits)
    writes no files. Both are balanced; the trainer cuts the long tail.

    folder: `archive` is a `<split>/<class>/<image>` directory or zip (the user's data);
    prepared once per version of its contents into `data_dir` (corrupt images: `on_corrupt`);
    test = its test split, val = its val/ (or validation/) split when it also has a test
    split (without one, val/ is the test split).
    imagenet_lt / places_lt / inat2018: with `archive` = the image root, the benchmark's list
    files (from `list_dir`, default the image root) define the splits; without it, TFDS's own
    prepared `imagenet_lt` / `i_naturalist2018` in `data_dir` are read (or a
    `tfds.testing.mock_data` mock). These are long-tailed already: use imbalance_factor 1.

    `image_size` (0 = 224, or for folders the typical shorter side of the images if smaller)
    is the side the model sees. `in_memory`: 'yes' decodes every image (resized, centre-
    cropped) into an ArraySplit; 'no' returns RecordSplits decoded per example by the input
    pipeline; 'auto' picks RAM when it needs at most 2 GiB. `eval_split` overrides the split
    used as the test set.
    """
    if name == "digits":
        return DataSplits(*load_digits())
    if name in ("folder", *BENCHMARKS):
        if in_memory not in IN_MEMORY:
            raise ValueError(f"in_memory={in_memory!r}; choose one of {IN_MEMORY}")
        if name == "folder":
            splits = _folder_splits(archive, data_dir, image_size, on_corrupt, eval_split)
        else:
            splits = DataSplits(
                *_benchmark_splits(
                    name, archive, data_dir, image_size, list_dir, on_corrupt, eval_split
                )
            )
        return DataSplits(*(None if s is None else _maybe_in_memory(s, in_memory) for s in splits))
    if name not in builders.CONFIG_NAMES:
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {DATASETS}, e.g. --config.data.name=cifar100."
        )
    builder = prepare_cifar(name, data_dir=data_dir, archive=archive)
    return DataSplits(read_split(builder, "train"), read_split(builder, "test"))


def load_splits(name: str, **options: Any) -> tuple[Split, Split]:
    """(train, test) of `load_dataset` (same arguments)."""
    splits = load_dataset(name, **options)
    return splits.train, splits.test


# --------------------------------------------------------------------------------------------
# Image folders and list-file benchmarks (RecordSplit)
# --------------------------------------------------------------------------------------------


def _folder_splits(
    root: str | None, data_dir: str | None, image_size: int, on_corrupt: str, eval_split: str
) -> DataSplits:
    if not root:
        raise ValueError(
            "dataset 'folder' needs the image tree: pass --config.data.root=/path/to/tree "
            "(a folder or zip laid out as <split>/<class>/<image>)."
        )
    store = image_builders.ImageStore(root)
    index = image_builders.folder_index(store.list_files())
    test_name = eval_split or next(
        (s for s in image_builders.EVAL_SPLIT_NAMES if s in index.splits), ""
    )
    if test_name not in index.splits:
        raise ValueError(
            f"{store.root!r} has splits {sorted(index.splits)} but no evaluation split "
            f"{eval_split or image_builders.EVAL_SPLIT_NAMES}; add a test/ folder or set "
            "--config.data.eval_split."
        )
    val_name = next((s for s in VAL_SPLIT_NAMES if s in index.splits and s != test_name), "")
    name = image_builders.dataset_slug("folder", store.root)
    builder_dir, digest = image_builders.prepare(
        store, index, name=name, data_dir=data_dir, on_corrupt=on_corrupt
    )
    names = ("train", test_name, *([val_name] if val_name else []))
    return DataSplits(
        *_record_splits(builder_dir, names, index, image_size, auto_size=True, fingerprint=digest)
    )


def _benchmark_splits(
    name: str,
    root: str | None,
    data_dir: str | None,
    image_size: int,
    list_dir: str,
    on_corrupt: str,
    eval_split: str,
) -> tuple[records.RecordSplit, records.RecordSplit]:
    bench = BENCHMARKS[name]
    size = image_size or DEFAULT_IMAGE_SIZE
    if root:
        store = image_builders.ImageStore(root)
        lists_at = os.path.expanduser(list_dir) if list_dir else _default_list_dir(store.root)
        files = {s: os.path.join(lists_at, f) for s, f in bench.list_files.items()}
        missing = [f for f in files.values() if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(
                f"{name} list files not found: {missing}. Put the benchmark's list files "
                f"({', '.join(bench.list_files.values())}) in one folder and pass "
                "--config.data.list_dir=/that/folder (docs/data.md#datasets)."
            )
        index = image_builders.list_index(files, bench.num_classes)
        slug = image_builders.dataset_slug(name, store.root, "|".join(sorted(files.values())))
        builder_dir, digest = image_builders.prepare(
            store, index, name=slug, data_dir=data_dir, on_corrupt=on_corrupt
        )
        splits = ("train", eval_split or bench.eval_split)
        train, test = _record_splits(
            builder_dir, splits, index, size, auto_size=False, fingerprint=digest
        )
        return train, test
    if bench.tfds_name is None:
        raise ValueError(
            f"{name} has no TFDS builder: pass the image root with --config.data.root and "
            "the list files with --config.data.list_dir."
        )
    out = []
    for split in ("train", eval_split or bench.tfds_eval_split):
        try:
            source = records.tfds_source(bench.tfds_name, split=split, data_dir=data_dir or None)
        except Exception as e:  # tfds raises several types for "not prepared here".
            raise FileNotFoundError(
                f"TFDS {bench.tfds_name!r} ({split}) is not prepared in "
                f"{data_dir or '~/tensorflow_datasets'} ({type(e).__name__}: {e}). Preparing "
                "it needs TensorFlow and the manual downloads; without them pass the image "
                "root (--config.data.root) and the list files (--config.data.list_dir) to "
                "build it TF-free."
            ) from e
        names = tuple(source.dataset_info.features["label"].names)
        out.append(records.record_split(source, split=split, image_size=size, class_names=names))
    return out[0], out[1]


def _default_list_dir(root: str) -> str:
    return root if os.path.isdir(root) else os.path.dirname(root)


def _record_splits(
    builder_dir: str,
    splits: tuple[str, ...],
    index: image_builders.ImageIndex,
    image_size: int,
    auto_size: bool,
    fingerprint: str = "",
) -> list[records.RecordSplit]:
    out = []
    for split in splits:
        source = records.tfds_source(split=split, builder_dir=builder_dir)
        out.append(
            records.record_split(
                source,
                split=split,
                image_size=image_size or DEFAULT_IMAGE_SIZE,
                num_classes=index.num_classes,
                class_names=index.class_names,
                fingerprint=fingerprint,
            )
        )
    if auto_size and not image_size:
        size = typical_image_size(out[0])
        out = [dataclasses.replace(s, image_size=size) for s in out]
    return out


def typical_image_size(split: records.RecordSplit, cap: int = DEFAULT_IMAGE_SIZE) -> int:
    """The automatic image size: min(cap, median shorter side of up to 64 images, headers
    only), rounded down to a multiple of 32 (of 8 below 32 px), so small images are not
    upscaled, large ones are cropped to the ImageNet default, and the ResNets' stride-2
    stages divide it evenly."""
    picks = np.linspace(0, len(split) - 1, num=min(64, len(split))).astype(int)
    sides = [min(augment_lib.open_image(split.read_image(i)).size) for i in picks]
    median = int(np.median(sides))
    step = 32 if median >= 32 else 8
    size = int(min(cap, max(8, median // step * step)))
    logging.info(
        "Image size %d (automatic: the median shorter side of %d images is %d px, rounded down "
        "to a multiple of %d). Set data.image_size (size= in the folder configs) to change it.",
        size,
        len(picks),
        median,
        step,
    )
    return size


def _maybe_in_memory(split: records.RecordSplit, in_memory: str) -> Split:
    """An ArraySplit of resized, centre-cropped images when asked (or small enough)."""
    nbytes = len(split) * split.image_size**2 * 3
    if in_memory == "no" or (in_memory == "auto" and nbytes > IN_MEMORY_AUTO_BYTES):
        return split
    logging.info("Decoding %d images (%d MB) into RAM", len(split), nbytes >> 20)
    images = records.decode_to_array(split)
    return ArraySplit(images, split.labels, split.num_classes, split.class_names, split.fingerprint)


# --------------------------------------------------------------------------------------------
# CIFAR: prepare, read, cache
# --------------------------------------------------------------------------------------------


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
                f"--config.data.archive=/path/to/shared/data/{_ARCHIVE_HINT[name]}."
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
            f"--config.data.archive=/path/to/shared/data/{_ARCHIVE_HINT[name]}, or run once with "
            "network access."
        )
    logging.info("Preparing %s into %s", builder.info.full_name, builder.data_dir)
    try:
        builder.download_and_prepare()
    except OSError as e:
        if archive is not None or isinstance(e, FileNotFoundError):
            raise
        raise FileNotFoundError(
            f"downloading {url} failed ({e}). Pass a local archive, e.g. "
            f"--config.data.archive=/path/to/shared/data/{_ARCHIVE_HINT[name]}."
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


def read_split(builder: builders.LtkdCifar, split: str) -> ArraySplit:
    """Decodes one prepared split into RAM, ordered by (label, id); cached as .npy."""
    names = tuple(builder.info.features["label"].names)
    num_examples = builder.info.splits[split].num_examples
    cache_dir = os.path.join(builder.data_dir, _CACHE_DIRNAME)
    paths = [os.path.join(cache_dir, f"{split}_{k}.npy") for k in ("labels", "images")]
    if all(os.path.exists(p) for p in paths):
        labels, images = (np.load(p) for p in paths)
        if len(labels) == len(images) == num_examples:
            return ArraySplit(images, labels, len(names), names)
        logging.warning("Ignoring stale decoded cache %s", cache_dir)
    images, labels = decode_split(builder, split)
    os.makedirs(cache_dir, exist_ok=True)
    for path, array in zip(paths, (labels, images), strict=True):
        cache.save_atomic(path, array)
    return ArraySplit(images, labels, len(names), names)


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
    full = ArraySplit(images, labels, 10, names)
    return full.subset(np.concatenate(train_idx)), full.subset(np.concatenate(test_idx))
