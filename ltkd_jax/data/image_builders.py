"""TF-free TFDS builder for image files: a `<split>/<class>/<image>` tree or zip, or an image
root plus benchmark list files (ImageNet-LT / Places-LT OLTR lists, iNaturalist 2018
classifier-balancing lists; docs/data.md#datasets). Writes ArrayRecord.

One implementation serves both layouts: an *index* maps each split to `(relative path, label)`
rows over an *image store* (a directory or a zip). Preparation has two passes:

1. every listed image is fully decoded (in a thread pool) before anything is written; corrupt
   or unreadable files are reported with their path and either rejected (`on_corrupt='error'`,
   nothing is written) or skipped (`on_corrupt='skip'`, listed in the dataset metadata);
2. the builder stores the original JPEG/PNG bytes unchanged (other formats and non-RGB images
   are re-encoded losslessly as RGB PNG), so decoding happens per example in the input
   pipeline's workers.

TFDS writes into an `incomplete.*` directory and renames it on success, and a lock file
serialises processes that prepare into the same `data_dir`, so a failure never leaves a
half-written dataset that a later run would trust.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import threading
import zipfile
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

BUILDER_NAME = "ltkd_images"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
ON_CORRUPT = ("error", "skip")
# Evaluation split names a folder tree may use, in order of preference.
EVAL_SPLIT_NAMES = ("test", "val", "validation")
_KEEP_FORMATS = ("JPEG", "PNG")  # Stored unchanged; anything else is re-encoded as PNG.


# --------------------------------------------------------------------------------------------
# Image stores: a directory or a zip
# --------------------------------------------------------------------------------------------


class ImageStore:
    """Read access to image files under a directory or inside a zip, by relative path.

    Thread-safe: each thread opens its own zip handle (a `ZipFile` is not safe to share).
    """

    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        if not os.path.exists(self.root):
            raise FileNotFoundError(
                f"image root {self.root!r} does not exist; point --config.data.root (alias "
                "--config.data.archive) at a folder or zip of images."
            )
        self.is_zip = os.path.isfile(self.root)
        if self.is_zip and not zipfile.is_zipfile(self.root):
            raise ValueError(f"{self.root!r} is a file but not a zip; pass a folder or a .zip.")
        self._local = threading.local()

    def list_files(self) -> list[str]:
        """Every image file, as a '/'-separated path relative to the root, sorted."""
        if self.is_zip:
            with zipfile.ZipFile(self.root) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/")]
        else:
            names = []
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel = os.path.relpath(dirpath, self.root)
                names += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in filenames]
        return sorted(n for n in names if _is_image_name(n))

    def read(self, path: str) -> bytes:
        if not self.is_zip:
            with open(os.path.join(self.root, path), "rb") as f:
                return f.read()
        zf = getattr(self._local, "zf", None)
        if zf is None:
            zf = self._local.zf = zipfile.ZipFile(self.root)
        return zf.read(path)

    def __getstate__(self):
        return {"root": self.root, "is_zip": self.is_zip}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()


def _is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    # macOS zips carry `__MACOSX/._x.jpg` resource forks; they are not images.
    return (
        not base.startswith(".")
        and "__MACOSX/" not in name
        and base.lower().endswith(IMAGE_EXTENSIONS)
    )


# --------------------------------------------------------------------------------------------
# Indexes: which files form which split, with which label
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageIndex:
    """`splits[name]` = [(relative path, label), ...]; labels index `class_names`."""

    class_names: tuple[str, ...]
    splits: dict[str, list[tuple[str, int]]]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def folder_index(files: Sequence[str]) -> ImageIndex:
    """Index of a `<split>/<class>/<image>` layout; class ids = sorted train class folders.

    A single wrapping folder (`mydata/train/...`, as zips often have) is accepted. The tree
    needs a `train` split; every other split's classes must appear in train.
    """
    files = list(files)
    rows = [f.split("/") for f in files]
    if rows and all(len(r) == 4 for r in rows) and len({r[0] for r in rows}) == 1:
        rows = [r[1:] for r in rows]  # A single wrapping folder: parse below it.
    layout = "<split>/<class>/<image>, e.g. train/cat/001.jpg and test/cat/101.jpg"
    stray = [f for f, r in zip(files, rows, strict=True) if len(r) != 3]
    if stray:
        raise ValueError(
            f"{len(stray)} image files are not at {layout}: e.g. {stray[:3]}. Move them into "
            "class folders under a split folder."
        )
    if not rows:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found; expected {layout}")
    by_split: dict[str, list[tuple[str, str]]] = {}
    for path, (split, cls, _) in zip(files, rows, strict=True):
        by_split.setdefault(split, []).append((path, cls))
    if "train" not in by_split:
        raise ValueError(f"no 'train' folder among {sorted(by_split)}; expected {layout}")
    class_names = tuple(sorted({c for _, c in by_split["train"]}))
    label_of = {c: i for i, c in enumerate(class_names)}
    for split, items in by_split.items():
        unknown = sorted({c for _, c in items} - set(label_of))
        if unknown:
            raise ValueError(
                f"split {split!r} has class folders missing from train: {unknown[:5]}. Every "
                "class needs training images; add them or remove those folders."
            )
    splits = {s: [(p, label_of[c]) for p, c in items] for s, items in by_split.items()}
    return ImageIndex(class_names, splits)


def read_list_file(path: str) -> list[tuple[str, int]]:
    """Parses `relative/path label` lines (OLTR / classifier-balancing list files)."""
    rows = []
    with open(os.path.expanduser(path)) as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            rel, _, label = line.rpartition(" ")
            if not rel or not label.lstrip("-").isdigit() or int(label) < 0:
                raise ValueError(
                    f"{path}:{lineno}: expected 'relative/path label', got {line!r}. Use the "
                    "benchmark's own list files (docs/data.md#datasets)."
                )
            rows.append((rel.strip().lstrip("/"), int(label)))
    if not rows:
        raise ValueError(f"list file {path!r} is empty")
    return rows


def list_index(
    list_files: dict[str, str], num_classes: int | None = None, strip_prefix: str = ""
) -> ImageIndex:
    """Index from `{split: list file}`; C = num_classes or 1 + the largest label.

    `strip_prefix` drops a leading path component the lists carry but the image root lacks
    (e.g. iNaturalist lists start with `train_val2018/`, an image root may already be it).
    """
    splits = {}
    for split, path in list_files.items():
        rows = read_list_file(path)
        if strip_prefix:
            rows = [(p.removeprefix(strip_prefix), y) for p, y in rows]
        splits[split] = rows
    top = 1 + max(y for rows in splits.values() for _, y in rows)
    if num_classes is not None and top > num_classes:
        raise ValueError(f"list files have label {top - 1} >= num_classes {num_classes}")
    n = num_classes or top
    return ImageIndex(tuple(str(c) for c in range(n)), splits)


# --------------------------------------------------------------------------------------------
# Checking images
# --------------------------------------------------------------------------------------------


def check_image(data: bytes) -> str | None:
    """None if `data` fully decodes as an image, else a short reason."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # `verify()` alone does not decompress, so it misses truncated files.
            if im.size[0] < 1 or im.size[1] < 1:
                return "empty image"
    except Exception as e:  # Pillow raises many unrelated types for bad data.
        return f"{type(e).__name__}: {e}"
    return None


def find_corrupt(
    store: ImageStore, paths: Sequence[str], num_threads: int | None = None
) -> dict[str, str]:
    """{path: reason} for every path that cannot be read or decoded (checked in parallel)."""

    def check(path: str) -> str | None:
        try:
            return check_image(store.read(path))
        except (OSError, KeyError) as e:  # Missing file / zip member, permission denied.
            return f"unreadable: {type(e).__name__}: {e}"

    workers = num_threads or min(32, (os.cpu_count() or 1) * 2)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        reasons = pool.map(check, paths, chunksize=64)
        return {p: r for p, r in zip(paths, reasons, strict=True) if r is not None}


def stored_bytes(data: bytes) -> bytes:
    """JPEG/PNG RGB bytes unchanged; anything else re-encoded losslessly as RGB PNG."""
    with Image.open(io.BytesIO(data)) as im:
        if im.format in _KEEP_FORMATS and im.mode == "RGB":
            return data
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()


# --------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------


class LtkdImages(tfds.core.GeneratorBasedBuilder):
    """Images from an `ImageStore` + `ImageIndex`, TF-free, for ArrayRecord.

    Features: `image` (encoded, any size, 3 channels), `label`, `path` (relative to the
    image root; lets a user trace a prediction back to its file). One builder config per
    dataset (its name is chosen by `prepare`), so several datasets share one `data_dir`.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # As in builders.LtkdCifar: TFDS's default needs the optional `importlib_resources`.
        return epath.Path(__file__)

    def __init__(
        self,
        *,
        store: ImageStore,
        index: ImageIndex,
        skipped: dict[str, str] | None = None,
        **kwargs: Any,
    ):
        self._store, self._index, self._skipped = store, index, dict(skipped or {})
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=self._index.class_names),
                    "path": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Everything is local.
        self.info.metadata["source"] = self._store.root
        self.info.metadata["skipped"] = self._skipped
        return {
            split: self._generate_examples(
                [r for r in rows if r[0] not in self._skipped]  # type: ignore[arg-type]
            )
            for split, rows in self._index.splits.items()
        }

    def _generate_examples(self, rows: Sequence[tuple[str, int]]):
        for path, label in rows:
            image = stored_bytes(self._store.read(path))
            yield path, {"image": image, "label": label, "path": path}


def dataset_slug(kind: str, root: str, extra: str = "") -> str:
    """A stable name per (kind, image root, list files): `<kind>_<hash>`; `prepare` appends
    the fingerprint of the contents, so each version of the data gets its own directory."""
    digest = hashlib.sha1(f"{os.path.abspath(root)}|{extra}".encode()).hexdigest()[:10]
    return f"{kind}_{digest}"


# --------------------------------------------------------------------------------------------
# Data identity: a fingerprint of the indexed files, and what changed since the last version
# --------------------------------------------------------------------------------------------

MANIFEST = "ltkd_manifest.json"  # Inside the prepared dataset dir: what it was prepared from.


def file_stats(
    store: ImageStore, paths: Sequence[str], num_threads: int | None = None
) -> dict[str, tuple[int, int]]:
    """{path: (size, mtime in ns)}; inside a zip (size, CRC-32), a content checksum for free.

    A missing file gets (-1, -1): preparation reports it as unreadable.
    """
    if store.is_zip:
        with zipfile.ZipFile(store.root) as zf:
            infos = {i.filename: (i.file_size, i.CRC) for i in zf.infolist()}
        return {p: infos.get(p, (-1, -1)) for p in paths}

    def stat(path: str) -> tuple[int, int]:
        try:
            st = os.stat(os.path.join(store.root, path))
        except OSError:
            return -1, -1
        return st.st_size, st.st_mtime_ns

    workers = num_threads or min(32, (os.cpu_count() or 1) * 4)  # Network file systems.
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return dict(zip(paths, pool.map(stat, paths, chunksize=256), strict=True))


def manifest(index: ImageIndex, stats: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """The identity of a dataset: class names and, per split, (path, label, size, mtime/CRC)."""
    return {
        "class_names": list(index.class_names),
        "splits": {
            split: [[p, y, *stats[p]] for p, y in sorted(rows)]
            for split, rows in sorted(index.splits.items())
        },
    }


def fingerprint(record: dict[str, Any]) -> str:
    """A SHA-1 of a `manifest` record: changes with any name, label, size or mtime/CRC."""
    text = json.dumps([record["class_names"], record["splits"]], separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two manifests, in a few words (classes, then files)."""
    parts = []
    added = sorted(set(new["class_names"]) - set(old["class_names"]))
    removed = sorted(set(old["class_names"]) - set(new["class_names"]))
    if added:
        parts.append(f"classes added {added[:5]}")
    if removed:
        parts.append(f"classes removed {removed[:5]}")

    def files(record):
        names = record["class_names"]
        return {
            (split, p): (names[y], size, stamp)
            for split, rows in record["splits"].items()
            for p, y, size, stamp in rows
        }

    before, after = files(old), files(new)
    common = before.keys() & after.keys()
    counts = {
        "images added": len(after.keys() - before.keys()),
        "images removed": len(before.keys() - after.keys()),
        "images modified": sum(before[k][1:] != after[k][1:] for k in common),
        "images relabelled": sum(before[k][0] != after[k][0] for k in common),
    }
    parts += [f"{n} {what}" for what, n in counts.items() if n]
    return ", ".join(parts) or "file list order or metadata changed"


def _previous_manifest(family_dir: str, prefix: str, exclude: str) -> tuple[str, dict] | None:
    """The newest manifest of another prepared version of the same source, if any."""
    found = []
    for name in os.listdir(family_dir) if os.path.isdir(family_dir) else ():
        if not name.startswith(prefix) or name == exclude:
            continue
        for version_dir in epath.Path(family_dir, name).glob(f"*/{MANIFEST}"):
            found.append((version_dir.stat().mtime, os.fspath(version_dir)))
    if not found:
        return None
    path = max(found)[1]
    with open(path) as f:
        return os.path.dirname(path), json.load(f)


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """An exclusive lock on `path` (processes on one machine; NFS/gcs are not covered)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(
    store: ImageStore,
    index: ImageIndex,
    *,
    name: str,
    data_dir: str | None = None,
    on_corrupt: str = "error",
) -> tuple[str, str]:
    """Prepares `ltkd_images/<name>_<fingerprint>` (once); returns (its directory, fingerprint).

    The fingerprint covers every indexed file's path, label, size and mtime (CRC-32 in a
    zip), so a changed source is prepared again, with a log line saying what changed; it is
    never silently reused. Every image is decoded before anything is written.
    `on_corrupt='error'` raises a ValueError naming every bad file; 'skip' logs each one and
    leaves it out.
    """
    if on_corrupt not in ON_CORRUPT:
        raise ValueError(f"on_corrupt={on_corrupt!r}; choose one of {ON_CORRUPT}")
    data_dir = os.path.abspath(os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR))
    paths = [p for rows in index.splits.values() for p, _ in rows]
    record = manifest(index, file_stats(store, paths))
    digest = fingerprint(record)
    versioned = f"{name}_{digest[:12]}"
    config = tfds.core.BuilderConfig(name=versioned, description=f"Images from {store.root}")
    family_dir = os.path.join(data_dir, BUILDER_NAME)
    lock = os.path.join(family_dir, f".{name}.lock")
    with _file_lock(lock):
        builder = LtkdImages(
            store=store, index=index, config=config, data_dir=data_dir, file_format="array_record"
        )
        if builder.is_prepared():
            return os.fspath(builder.data_dir), digest
        previous = _previous_manifest(family_dir, f"{name}_", versioned)
        if previous is not None:
            logging.warning(
                "%s changed since it was prepared into %s (%s): preparing it again. The old "
                "copy is kept; delete it to free the space.",
                store.root,
                previous[0],
                describe_changes(previous[1], record),
            )
        logging.info("Checking %d images under %s", len(paths), store.root)
        corrupt = find_corrupt(store, paths)
        if corrupt:
            listing = "\n".join(f"  {store.root}/{p}: {r}" for p, r in sorted(corrupt.items()))
            if on_corrupt == "error":
                raise ValueError(
                    f"{len(corrupt)} of {len(paths)} images cannot be decoded (nothing was "
                    f"written):\n{listing}\nFix or delete them, or pass "
                    "--config.data.on_corrupt=skip to leave them out."
                )
            logging.warning("Skipping %d corrupt images:\n%s", len(corrupt), listing)
        builder = LtkdImages(
            store=store,
            index=index,
            skipped=corrupt,
            config=config,
            data_dir=data_dir,
            file_format="array_record",
        )
        logging.info("Preparing %s into %s", builder.info.full_name, builder.data_dir)
        builder.download_and_prepare()
        with open(os.path.join(os.fspath(builder.data_dir), MANIFEST), "w") as f:
            json.dump({"fingerprint": digest, **record}, f)
        return os.fspath(builder.data_dir), digest
