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
import fcntl
import io
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from ltkd_jax.data import builders, manifests
from ltkd_jax.data.image_index import ImageIndex, ImageStore
from ltkd_jax.errors import UserError

BUILDER_NAME = "ltkd_images"
ON_CORRUPT = ("error", "skip")
# Evaluation split names a folder tree may use, in order of preference.
EVAL_SPLIT_NAMES = ("test", "val", "validation")
_KEEP_FORMATS = ("JPEG", "PNG")  # Stored unchanged; anything else is re-encoded as PNG.
MAX_LISTED = 20  # corrupt files named in the error (the skip warning lists them all)


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


class LtkdImages(builders.QuietBuilder):
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


def _listing(store: ImageStore, reasons: dict[str, str], limit: int | None = None) -> str:
    """One indented `path: reason` line per file, the first `limit` of them."""
    shown = sorted(reasons.items())[:limit]
    lines = [f"  {store.root}/{p}: {r}" for p, r in shown]
    if len(reasons) > len(shown):
        lines.append(f"  ... and {len(reasons) - len(shown)} more")
    return "\n".join(lines)


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
    record, digest = manifests.identify(store, index)
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
        previous = manifests.previous_manifest(family_dir, f"{name}_", versioned)
        if previous is not None:
            logging.warning(
                "%s changed since it was prepared into %s (%s): preparing it again. The old "
                "copy is kept; delete it to free the space.",
                store.root,
                previous[0],
                manifests.describe_changes(previous[1], record),
            )
        paths = [p for rows in index.splits.values() for p, _ in rows]
        logging.info("Checking %d images under %s", len(paths), store.root)
        corrupt = find_corrupt(store, paths)
        if corrupt and on_corrupt == "error":
            raise UserError(
                f"{len(corrupt)} of {len(paths)} images cannot be decoded (nothing was "
                f"written):\n{_listing(store, corrupt, MAX_LISTED)}\nFix or delete them, or "
                "pass --config.data.on_corrupt=skip to leave them out."
            )
        if corrupt:
            logging.warning(
                "Skipping %d corrupt images:\n%s", len(corrupt), _listing(store, corrupt)
            )
        builder = LtkdImages(
            store=store,
            index=index,
            skipped=corrupt,
            config=config,
            data_dir=data_dir,
            file_format="array_record",
        )
        builder.download_and_prepare()
        with open(os.path.join(os.fspath(builder.data_dir), manifests.MANIFEST), "w") as f:
            json.dump({"fingerprint": digest, **record}, f)
        return os.fspath(builder.data_dir), digest
