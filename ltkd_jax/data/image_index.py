"""Where a dataset's images are and what they are labelled: a directory or zip of files
(`ImageStore`), indexed from a `<split>/<class>/<image>` tree or from benchmark list files
(`ImageIndex`)."""

from __future__ import annotations

import dataclasses
import os
import threading
import zipfile
from collections.abc import Sequence

from ltkd_jax.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class ImageStore:
    """Read access to image files under a directory or inside a zip, by relative path.

    Thread-safe: each thread opens its own zip handle (a `ZipFile` is not safe to share).
    """

    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        if not os.path.exists(self.root):
            # No config field named: `evaluate --data` and `--config.data.root` both get here.
            raise UserError(f"{self.root!r} does not exist; pass a folder or zip of images")
        self.is_zip = os.path.isfile(self.root)
        if self.is_zip and not zipfile.is_zipfile(self.root):
            raise UserError(f"{self.root!r} is a file but not a zip; pass a folder or a .zip")
        self._local = threading.local()

    def list_files(self) -> list[str]:
        """Every image file, as a '/'-separated path relative to the root, sorted."""
        return sorted(n for n in self._all_files() if _is_image_name(n))

    def other_files(self) -> list[str]:
        """The files `list_files` leaves out (no image extension, hidden, macOS forks)."""
        return sorted(n for n in self._all_files() if not _is_image_name(n))

    def _all_files(self) -> list[str]:
        if self.is_zip:
            with zipfile.ZipFile(self.root) as zf:
                return [n for n in zf.namelist() if not n.endswith("/")]
        names = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = os.path.relpath(dirpath, self.root)
            names += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/") for f in filenames]
        return names

    def list_dirs(self) -> list[str]:
        """Every folder, as a '/'-separated path relative to the root, sorted; a zip lists
        the folder entries it stores (an empty folder exists in a zip only as one)."""
        if self.is_zip:
            with zipfile.ZipFile(self.root) as zf:
                names = [n.rstrip("/") for n in zf.namelist() if n.endswith("/")]
        else:
            names = []
            for dirpath, dirnames, _ in os.walk(self.root):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                rel = os.path.relpath(dirpath, self.root)
                names += [d if rel == "." else f"{rel}/{d}".replace(os.sep, "/") for d in dirnames]
        return sorted(n for n in names if "__MACOSX" not in n)

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


@dataclasses.dataclass(frozen=True)
class ImageIndex:
    """`splits[name]` = [(relative path, label), ...]; labels index `class_names`."""

    class_names: tuple[str, ...]
    splits: dict[str, list[tuple[str, int]]]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _empty_train_classes(rows: list[list[str]], dirs: Sequence[str], wrapper: str) -> list[str]:
    """Class folders under train/ that hold no image file (docs/own_data.md: a class needs
    training images)."""
    prefix = f"{wrapper}/train/" if wrapper else "train/"
    folders = {d[len(prefix) :] for d in dirs if d.startswith(prefix)}
    with_images = {r[1] for r in rows if r[0] == "train"}
    return sorted(f for f in folders if "/" not in f and f not in with_images)


def folder_index(files: Sequence[str], dirs: Sequence[str] = ()) -> ImageIndex:
    """Index of a `<split>/<class>/<image>` layout; class ids = sorted train class folders.

    A single wrapping folder (`mydata/train/...`, as zips often have) is accepted. The tree
    needs a `train` split; every other split's classes must appear in train. `dirs` (the
    store's folders) lets an empty class folder under train/ be named (UserError) instead of
    silently dropped.
    """
    files = list(files)
    rows = [f.split("/") for f in files]
    wrapper = ""
    if rows and all(len(r) == 4 for r in rows) and len({r[0] for r in rows}) == 1:
        wrapper = rows[0][0]
        rows = [r[1:] for r in rows]  # A single wrapping folder: parse below it.
    layout = "<split>/<class>/<image>, e.g. train/cat/001.jpg and test/cat/101.jpg"
    stray = [f for f, r in zip(files, rows, strict=True) if len(r) != 3]
    if stray:
        raise UserError(
            f"{len(stray)} image files are not at {layout}: e.g. {stray[:3]}. Move them into "
            "class folders under a split folder."
        )
    if not rows:
        raise UserError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) found; expected {layout}")
    by_split: dict[str, list[tuple[str, str]]] = {}
    for path, (split, cls, _) in zip(files, rows, strict=True):
        by_split.setdefault(split, []).append((path, cls))
    if "train" not in by_split:
        raise UserError(f"no 'train' folder among {sorted(by_split)}; expected {layout}")
    empty = _empty_train_classes(rows, dirs, wrapper)
    if empty:
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        raise UserError(
            f"{len(empty)} class folder(s) under train/ hold no images: {empty[:10]}{more}. "
            "Every class needs training images: add some, or remove those folders (from "
            "every split)."
        )
    class_names = tuple(sorted({c for _, c in by_split["train"]}))
    label_of = {c: i for i, c in enumerate(class_names)}
    for split, items in by_split.items():
        unknown = sorted({c for _, c in items} - set(label_of))
        if unknown:
            raise UserError(
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
