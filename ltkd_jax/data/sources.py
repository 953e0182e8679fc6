"""Train/test splits: CIFAR-10/100 and sklearn digits decoded into RAM; ImageNet-LT, Places-LT,
iNaturalist 2018 and a user's image folders read per example (`records.RecordSplit`) or, when
small, decoded into RAM. `load_dataset` dispatches on the dataset name (docs/data.md#datasets).

CIFAR-sized data fits in RAM (50k x 32x32x3 uint8 = 150 MB), so each split is decoded once from
the prepared ArrayRecord files and cached as `.npy` next to them; later loads take a fraction of
a second. Train images are ordered by (label, index within class) — the original
within-class order — which the LDAM-DRW long-tail generator needs
(docs/data.md#long-tailed-cifar-subsets).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

import numpy as np
from absl import logging

from ltkd_jax.data import augment as augment_lib
from ltkd_jax.data import builders, cifar, image_builders, image_index, manifests, records
from ltkd_jax.data.arrays import ArraySplit
from ltkd_jax.errors import UserError

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


Split = ArraySplit | records.RecordSplit


class DataSplits(NamedTuple):
    """A dataset's splits: `val` (None when the data has none) selects checkpoints."""

    train: Split
    test: Split
    val: Split | None = None


def split_options(data_config: Any) -> dict[str, Any]:
    """The `load_splits` keyword options held in `config.data` (see config.defaults.base_config)."""
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
        return DataSplits(*cifar.load_digits())
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
    builder = cifar.prepare_cifar(name, data_dir=data_dir, archive=archive)
    return DataSplits(cifar.read_split(builder, "train"), cifar.read_split(builder, "test"))


# --------------------------------------------------------------------------------------------
# Image folders and list-file benchmarks (RecordSplit)
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FolderSource:
    """A `<split>/<class>/<image>` tree as listed, before any image is read: its store, its
    index and the names of its test and (optional) val splits."""

    store: image_index.ImageStore
    index: image_index.ImageIndex
    test_name: str
    val_name: str

    def class_counts(self) -> np.ndarray:
        """int64 [C] training images per class, from the file listing."""
        labels = [y for _, y in self.index.splits["train"]]
        return np.bincount(labels, minlength=self.index.num_classes).astype(np.int64)

    def fingerprint(self) -> str:
        """The fingerprint preparation keys on (`manifests.identify`): file stats, no decoding."""
        return manifests.identify(self.store, self.index)[1]


def folder_source(root: str | None, eval_split: str = "") -> FolderSource:
    """Lists and indexes the image tree at `root`; UserError when it is not usable."""
    if not root:
        raise UserError(
            "dataset 'folder' needs the image tree: pass --config.data.root=/path/to/tree "
            "(a folder or zip laid out as <split>/<class>/<image>)."
        )
    store = image_index.ImageStore(root)
    index = image_index.folder_index(store.list_files(), store.list_dirs())
    test_name = eval_split or next(
        (s for s in image_builders.EVAL_SPLIT_NAMES if s in index.splits), ""
    )
    if test_name not in index.splits:
        raise UserError(
            f"{store.root!r} has splits {sorted(index.splits)} but no evaluation split "
            f"{eval_split or image_builders.EVAL_SPLIT_NAMES}; add a test/ folder or set "
            "--config.data.eval_split."
        )
    val_name = next((s for s in VAL_SPLIT_NAMES if s in index.splits and s != test_name), "")
    return FolderSource(store, index, test_name, val_name)


def _folder_splits(
    root: str | None, data_dir: str | None, image_size: int, on_corrupt: str, eval_split: str
) -> DataSplits:
    source = folder_source(root, eval_split)
    name = manifests.dataset_slug("folder", source.store.root)
    builder_dir, digest = image_builders.prepare(
        source.store, source.index, name=name, data_dir=data_dir, on_corrupt=on_corrupt
    )
    names = ("train", source.test_name, *([source.val_name] if source.val_name else []))
    return DataSplits(
        *_record_splits(
            builder_dir, names, source.index, image_size, auto_size=True, fingerprint=digest
        )
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
        store = image_index.ImageStore(root)
        lists_at = os.path.expanduser(list_dir) if list_dir else _default_list_dir(store.root)
        files = {s: os.path.join(lists_at, f) for s, f in bench.list_files.items()}
        missing = [f for f in files.values() if not os.path.isfile(f)]
        if missing:
            raise FileNotFoundError(
                f"{name} list files not found: {missing}. Put the benchmark's list files "
                f"({', '.join(bench.list_files.values())}) in one folder and pass "
                "--config.data.list_dir=/that/folder (docs/data.md#datasets)."
            )
        index = image_index.list_index(files, bench.num_classes)
        slug = manifests.dataset_slug(name, store.root, "|".join(sorted(files.values())))
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
    index: image_index.ImageIndex,
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
