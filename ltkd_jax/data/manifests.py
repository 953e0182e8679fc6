"""The identity of prepared image data: a stable name per source, a manifest of the indexed
files (path, label, size, mtime or CRC) and its fingerprint, and what changed since the last
prepared version."""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import zipfile
from collections.abc import Sequence
from typing import Any

from etils import epath

from ltkd_jax.data.image_index import ImageIndex, ImageStore

MANIFEST = "ltkd_manifest.json"  # Inside the prepared dataset dir: what it was prepared from.


def dataset_slug(kind: str, root: str, extra: str = "") -> str:
    """A stable name per (kind, image root, list files): `<kind>_<hash>`; `prepare` appends
    the fingerprint of the contents, so each version of the data gets its own directory."""
    digest = hashlib.sha1(f"{os.path.abspath(root)}|{extra}".encode()).hexdigest()[:10]
    return f"{kind}_{digest}"


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


def identify(store: ImageStore, index: ImageIndex) -> tuple[dict[str, Any], str]:
    """(`manifest`, `fingerprint`) of the indexed files: stats only, no image is read."""
    paths = [p for rows in index.splits.values() for p, _ in rows]
    record = manifest(index, file_stats(store, paths))
    return record, fingerprint(record)


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


def previous_manifest(family_dir: str, prefix: str, exclude: str) -> tuple[str, dict] | None:
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
