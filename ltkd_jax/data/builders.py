"""TF-free TFDS builders for CIFAR-10 / CIFAR-100 that write ArrayRecord.

Why a custom builder: TFDS's own `cifar10`/`cifar100` builders yield numpy images (encoding
them needs TensorFlow) and read with `tf.io.gfile`. This builder yields *encoded* image bytes,
which TFDS stores without TensorFlow.

Three sources, same features:

* a local zip laid out as `{train,test}/<class>/<NNNN>.(png|jpg)` (the files in
  `../shared/data/`): member bytes are stored unchanged after a full decode check, so a JPEG
  zip stays a lossy copy;
* the official python pickles (https://www.cs.toronto.edu/~kriz/), fetched by TFDS's download
  manager when online, or a local copy of the official tarball (`cifar-10-python.tar.gz`,
  `cifar-100-python.tar.gz`) passed as the archive; re-encoded losslessly as PNG with Pillow.

`stored_encoding` tells which kind of image bytes a prepared dataset holds.

Every example carries `id` = its index within its class in the original dataset order, so
readers can restore the (label, id) order that the LDAM-DRW long-tail generator relies on
(docs/data.md#long-tailed-cifar-subsets).
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tarfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any, BinaryIO

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

BUILDER_NAME = "ltkd_cifar"
IMAGE_SHAPE = (32, 32, 3)
SPLITS = ("train", "test")
CONFIG_NAMES = ("cifar10", "cifar100")

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard",
    "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse",
    "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck",
    "pine_tree", "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray",
    "road", "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
    "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip

_MEMBER_RE = re.compile(r"^(train|test)/([^/]+)/(\d+)\.(png|jpg|jpeg)$", re.IGNORECASE)
# An archive with one of these suffixes is the official pickle tarball, anything else a zip.
TARBALL_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# Leading bytes of the stored image encodings, and whether each keeps the exact pixels.
MAGIC = {b"\x89PNG\r\n\x1a\n": "png", b"\xff\xd8\xff": "jpeg"}
LOSSLESS = {"png": True, "jpeg": False}


def is_tarball(archive: str) -> bool:
    return archive.lower().endswith(TARBALL_SUFFIXES)


def image_encoding(data: bytes) -> str:
    """'png', 'jpeg' or 'unknown', from an encoded image's leading bytes."""
    return next((name for magic, name in MAGIC.items() if data.startswith(magic)), "unknown")


class LtkdCifarConfig(tfds.core.BuilderConfig):
    """One CIFAR variant: its class names and the official pickle archive."""

    def __init__(
        self,
        *,
        class_names: Sequence[str],
        url: str,
        pickle_dir: str,
        pickle_files: dict[str, tuple[str, ...]],
        label_key: str,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.class_names = tuple(class_names)
        self.url = url
        self.pickle_dir = pickle_dir
        self.pickle_files = pickle_files
        self.label_key = label_key


CIFAR10_CONFIG = LtkdCifarConfig(
    name="cifar10",
    description="CIFAR-10, 50k train / 10k test, 10 classes.",
    class_names=CIFAR10_CLASSES,
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    pickle_dir="cifar-10-batches-py",
    pickle_files={"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)},
    label_key="labels",
)
CIFAR100_CONFIG = LtkdCifarConfig(
    name="cifar100",
    description="CIFAR-100 (fine labels), 50k train / 10k test, 100 classes.",
    class_names=CIFAR100_CLASSES,
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    pickle_dir="cifar-100-python",
    pickle_files={"train": ("train",), "test": ("test",)},
    label_key="fine_labels",
)


# --------------------------------------------------------------------------------------------
# Local zip archive
# --------------------------------------------------------------------------------------------


def index_archive(
    archive: str, class_names: Sequence[str]
) -> dict[str, list[tuple[str, int, int]]]:
    """Lists `{split: [(member, label, id), ...]}` of a `{split}/<class>/<NNNN>.<ext>` zip.

    Raises a ValueError naming the problem and the expected layout if the zip does not match
    (missing split, unknown or missing class folder, stray files).
    """
    if not os.path.isfile(archive):
        raise FileNotFoundError(
            f"CIFAR archive not found: {archive!r}. Pass the path of an existing zip, e.g. "
            "--config.data.archive=/path/to/shared/data/cifar100-png.zip."
        )
    try:
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/")]
    except zipfile.BadZipFile as e:
        raise ValueError(f"{archive!r} is not a readable zip file ({e}).") from e
    label_of = {c: i for i, c in enumerate(class_names)}
    layout = "{train,test}/<class>/<NNNN>.(png|jpg)"
    members: dict[str, list[tuple[str, int, int]]] = {s: [] for s in SPLITS}
    stray, unknown = [], set()
    for name in names:
        m = _MEMBER_RE.match(name)
        if m is None:
            stray.append(name)
        elif m.group(2) not in label_of:
            unknown.add(m.group(2))
        else:
            members[m.group(1)].append((name, label_of[m.group(2)], int(m.group(3))))
    problems = []
    if stray:
        problems.append(f"{len(stray)} members outside the layout, e.g. {stray[:3]}")
    if unknown:
        problems.append(f"unknown class folders {sorted(unknown)[:5]}")
    for split, rows in members.items():
        missing = sorted(set(range(len(class_names))) - {label for _, label, _ in rows})
        if missing:
            problems.append(
                f"split {split!r} lacks {len(missing)} of {len(class_names)} classes, e.g. "
                f"{[class_names[i] for i in missing[:3]]}"
            )
    if problems:
        raise ValueError(
            f"{archive!r} does not have the expected layout {layout} with the "
            f"{len(class_names)} class folders of this dataset: {'; '.join(problems)}. "
            "Pass the matching archive (cifar10-jpeg.zip for cifar10, cifar100-png.zip for "
            "cifar100) or omit the archive to download the official data."
        )
    for rows in members.values():
        rows.sort(key=lambda r: (r[1], r[2]))
    return members


def check_image(data: bytes, where: str) -> None:
    """Fully decodes `data` and checks it is a 32x32 RGB image; errors name `where`."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # `verify()` alone does not decompress, so it misses truncated data.
            size, mode = im.size, im.mode
    except Exception as e:  # Pillow raises several unrelated types for bad data.
        raise ValueError(
            f"corrupt image {where}: {type(e).__name__}: {e}. Replace the archive with an intact "
            "copy (e.g. from ../shared/data) or omit it to download the official data."
        ) from e
    if size != IMAGE_SHAPE[:2] or mode != "RGB":
        raise ValueError(
            f"image {where} is {size[0]}x{size[1]} {mode}, expected 32x32 RGB. Use the CIFAR "
            "archive from ../shared/data or omit the archive to download the official data."
        )


def examples_from_archive(
    archive: str, rows: Sequence[tuple[str, int, int]]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields `(key, example)` for the given zip members; image bytes are stored unchanged."""
    with zipfile.ZipFile(archive) as zf:
        for name, label, idx in rows:
            data = zf.read(name)
            check_image(data, f"{name!r} in {archive!r}")
            yield name, {"image": data, "label": label, "id": idx}


# --------------------------------------------------------------------------------------------
# Official python pickles
# --------------------------------------------------------------------------------------------


def encode_png(image: np.ndarray) -> bytes:
    """Losslessly encodes a uint8 HWC image as PNG bytes (TFDS would need TF for numpy)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def read_pickle_batches(
    open_batch: Callable[[str], BinaryIO], files: Sequence[str], label_key: str
):
    """Returns (images uint8 [N, 32, 32, 3], labels int64 [N]) in the official order;
    `open_batch(name)` opens one pickle file of the official archive."""
    images, labels = [], []
    for fname in files:
        with open_batch(fname) as f:
            batch = pickle.load(f, encoding="bytes")
        rows = np.asarray(batch[b"data"], dtype=np.uint8)
        # Each row is 1024 R, 1024 G, 1024 B values, each plane row-major.
        images.append(rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[label_key.encode()], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def within_class_ids(labels: np.ndarray) -> np.ndarray:
    """Position of each example among the examples of its class, in the given order."""
    ids = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        ids[where] = np.arange(len(where))
    return ids


def examples_from_pickles(
    open_batch: Callable[[str], BinaryIO], files: Sequence[str], label_key: str, split: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yields `(key, example)` from the official pickles, images re-encoded as PNG."""
    images, labels = read_pickle_batches(open_batch, files, label_key)
    ids = within_class_ids(labels)
    for image, label, idx in zip(images, labels, ids, strict=True):
        key = f"{split}/{int(label):03d}/{int(idx):05d}"
        yield key, {"image": encode_png(image), "label": int(label), "id": int(idx)}


def examples_from_tarball(
    archive: str, cfg: LtkdCifarConfig, split: str
) -> Iterator[tuple[str, dict[str, Any]]]:
    """`examples_from_pickles` read straight from the official tarball (nothing extracted)."""
    try:
        tar = tarfile.open(archive)
    except tarfile.TarError as e:
        raise ValueError(
            f"{archive!r} is not a readable tar archive ({e}); pass the official "
            f"{os.path.basename(cfg.url)} or a zip of image folders"
        ) from e
    with tar:

        def open_batch(name: str) -> BinaryIO:
            member = f"{cfg.pickle_dir}/{name}"
            try:
                return tar.extractfile(member)
            except KeyError:
                raise ValueError(
                    f"{archive!r} has no {member}: it is not the official "
                    f"{os.path.basename(cfg.url)} of {cfg.name}"
                ) from None

        yield from examples_from_pickles(open_batch, cfg.pickle_files[split], cfg.label_key, split)


# --------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------


class QuietBuilder(tfds.core.GeneratorBasedBuilder):
    """A builder that logs where it prepares instead of printing tfds's download banner
    ("Downloading and preparing dataset Unknown size ...") on stdout, and without tfds's
    per-split progress bars (two per split, named by a temporary path): nothing is
    downloaded from a local zip or folder, and stdout is for results."""

    def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
        tfds.display_progress_bar(False)
        try:
            super().download_and_prepare(*args, **kwargs)
        finally:
            tfds.display_progress_bar(True)

    def _log_download_bytes(self) -> None:
        logging.info("Preparing %s into %s", self.info.full_name, self.data_dir)

    def _log_download_done(self) -> None:
        logging.info("Prepared %s", self.data_dir)


class LtkdCifar(QuietBuilder):
    """CIFAR-10/100 from a local zip or the official pickles, TF-free, for ArrayRecord.

    `archive`: path of a `{train,test}/<class>/<NNNN>.(png|jpg)` zip or of the official
    pickle tarball; None downloads the official data. Features: `image` (32x32x3), `label`
    (official order), `id` (index of the image within its class in the original order).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [CIFAR10_CONFIG, CIFAR100_CONFIG]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's default resolves packaged builders through `importlib_resources`, an optional
        # dependency that is not installed; the path only locates an (absent) checksums file.
        return epath.Path(__file__)

    def __init__(self, *, archive: str | None = None, **kwargs: Any):
        self._archive = os.fspath(archive) if archive is not None else None
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE),
                    "label": tfds.features.ClassLabel(names=self.builder_config.class_names),
                    "id": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        if self._archive is not None and is_tarball(self._archive):
            self.info.metadata["source"] = f"archive:{os.path.basename(self._archive)}"
            return {
                s: self._generate_examples(examples_from_tarball(self._archive, cfg, s))
                for s in SPLITS
            }
        if self._archive is not None:
            members = index_archive(self._archive, cfg.class_names)  # Fails fast on layout.
            self.info.metadata["source"] = f"archive:{os.path.basename(self._archive)}"
            return {
                s: self._generate_examples(examples_from_archive(self._archive, members[s]))
                for s in SPLITS
            }
        root = os.path.join(os.fspath(dl_manager.download_and_extract(cfg.url)), cfg.pickle_dir)
        self.info.metadata["source"] = f"download:{cfg.url}"

        def open_batch(name: str) -> BinaryIO:
            return open(os.path.join(root, name), "rb")

        return {
            s: self._generate_examples(
                examples_from_pickles(open_batch, cfg.pickle_files[s], cfg.label_key, s)
            )
            for s in SPLITS
        }

    def _generate_examples(self, examples: Iterator[tuple[str, dict[str, Any]]]):
        # The source-specific generators above do the work; keys are unique per split.
        yield from examples
