"""A finished run loaded for inference, and image files preprocessed as its evaluation does.

Shared by `predict`, `evaluate`, `export` and the report written after training:

- :func:`load_run`: the run's model and its last (or best) checkpoint, restored read-only,
  with its class names and its :class:`Preprocess`.
- :class:`Preprocess`: what turns an image file into the model's uint8 input. Evaluation
  images reach the model as the trainer's test split has them: in-RAM splits (CIFAR, digits,
  small folders) were resized once with the whole shorter side kept (crop fraction 1), splits
  read per example are resized to size / 0.875 and centre-cropped (`data.augment`). Folder
  builders store JPEG/PNG RGB bytes as they are and re-encode anything else as RGB PNG
  (`image_builders.stored_bytes`); files go through the same function here, so a file of the
  run's own test folder gives the pixels the trainer evaluated.
- :func:`image_batches`: files decoded in threads, in padded batches; unreadable or corrupt
  files are reported with their path and skipped.

Both `labels.json` and `preprocess.json` are written into the workdir after training (see
`report.write_run_report`), so a run can be used where its dataset is not; for older runs
they are derived from the dataset.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from PIL import Image

from ltkd_jax import data
from ltkd_jax.data import augment, image_builders, image_index
from ltkd_jax.runs import finished
from ltkd_jax.training import networks, sharding

LABELS_FILE = "labels.json"
PREPROCESS_FILE = "preprocess.json"


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Image file -> uint8 [size, size, channels]: resize the shorter side to
    size / crop_fraction (bilinear), centre-crop size x size; 1 channel = ITU-R 601 luma.

    The model then sees `(x / 255 - mean) / std` per channel (done inside the jitted
    function and the exported artifacts, never by the caller).
    """

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_fraction: float

    def to_json(self) -> dict:
        return {
            "input_shape": [self.size, self.size, self.channels],
            "layout": "NHWC",
            "dtype": "uint8",
            "value_range": [0, 255],
            "color": "RGB" if self.channels == 3 else "L (ITU-R 601 luma)",
            "resize": "shorter side to size / crop_fraction (bilinear), centre crop size x size",
            "crop_fraction": self.crop_fraction,
            "mean": list(self.mean),
            "std": list(self.std),
            "normalization": "(x / 255 - mean) / std per channel, inside the model",
        }

    @classmethod
    def from_json(cls, d: dict) -> Preprocess:
        size, _, channels = d["input_shape"]
        return cls(
            size=int(size),
            channels=int(channels),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            crop_fraction=float(d["crop_fraction"]),
        )

    def __call__(self, raw: bytes) -> np.ndarray:
        """Encoded image bytes -> uint8 [size, size, channels]; raises on a corrupt file."""
        reason = image_builders.check_image(raw)
        if reason is not None:
            raise ValueError(reason)
        rgb = augment.resize_center_crop(
            image_builders.stored_bytes(raw), self.size, self.crop_fraction
        )
        if self.channels == 3:
            return rgb
        return np.asarray(Image.fromarray(rgb).convert("L"))[..., None]


def crop_fraction_of(test_split: data.Split) -> float:
    """1 for in-RAM splits (resized once, whole shorter side), 0.875 for per-example reads."""
    if isinstance(test_split, data.RecordSplit):
        return augment.CENTER_CROP_FRACTION
    return 1.0


def preprocess_for(config: ml_collections.ConfigDict, test_split: data.Split) -> Preprocess:
    """The evaluation preprocessing of a run whose test split is `test_split`."""
    h, w, c = test_split.image_shape
    if h != w:
        raise ValueError(f"expected square model inputs, got {h}x{w}")
    mean, std = data.input_stats(config.data, test_split.image_shape[-1])
    return Preprocess(h, c, tuple(mean), tuple(std), crop_fraction_of(test_split))


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def run_metadata(workdir: str, run_config: ml_collections.ConfigDict):
    """(class names, Preprocess) of a run: from its workdir files, else from its dataset."""
    labels = os.path.join(workdir, LABELS_FILE)
    prep = os.path.join(workdir, PREPROCESS_FILE)
    if os.path.exists(labels) and os.path.exists(prep):
        return tuple(_read_json(labels)["class_names"]), Preprocess.from_json(_read_json(prep))
    try:
        task = data.load_task(run_config.data)
        train_split, test_split = task.train, task.test
    except Exception as e:  # any failure to find the data: say what is missing and the fix
        raise FileNotFoundError(
            f"{workdir} has no {LABELS_FILE} / {PREPROCESS_FILE} (written after training since "
            f"this version) and its dataset {run_config.data.name!r} could not be loaded "
            f"({type(e).__name__}: {e}). Run this where the run's data is (same "
            "--config.data.* paths), which writes both files into the workdir."
        ) from e
    names = tuple(train_split.class_names) or tuple(str(i) for i in range(train_split.num_classes))
    return names, preprocess_for(run_config, test_split)


def write_metadata(out_dir: str, class_names: Sequence[str], prep: Preprocess) -> None:
    """labels.json (class names, in logit order) and preprocess.json."""
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, LABELS_FILE), "w") as f:
        json.dump({"class_names": list(class_names)}, f, indent=2)
    with open(os.path.join(out_dir, PREPROCESS_FILE), "w") as f:
        json.dump(prep.to_json(), f, indent=2)


@dataclasses.dataclass(frozen=True)
class LoadedRun(finished.FinishedRun):
    """A finished run (`runs.finished.load`) with what deploying it needs: its class names
    (in logit order) and how an image file becomes its input."""

    class_names: tuple[str, ...] = ()
    preprocess: Preprocess | None = None


def load_run(
    workdir: str,
    checkpoint: str = "last",
    *,
    mesh: jax.sharding.Mesh | None = None,
    metadata: tuple[tuple[str, ...], Preprocess] | None = None,
) -> LoadedRun:
    """`finished.load` of a run's checkpoint, with its class names and Preprocess
    (`metadata` when known; else `run_metadata(workdir)`)."""
    run = finished.load(workdir, checkpoint, mesh=mesh)
    class_names, prep = metadata or run_metadata(run.workdir, run.config)
    if len(class_names) != run.num_classes:
        raise ValueError(
            f"{run.workdir}: {len(class_names)} class names for {run.num_classes} classes; "
            f"delete {LABELS_FILE} there to re-derive them from the dataset"
        )
    fields = {f.name: getattr(run, f.name) for f in dataclasses.fields(finished.FinishedRun)}
    return LoadedRun(**fields, class_names=tuple(class_names), preprocess=prep)


def logits_fn(run: LoadedRun):
    """jit(variables, uint8 images) -> float32 logits: the trainer's evaluation forward pass."""
    mean, std = run.preprocess.mean, run.preprocess.std

    def forward(variables, images):
        logits, _ = run.model.apply(variables, data.normalize(images, mean, std), train=False)
        return logits.astype(jnp.float32)

    return jax.jit(
        forward,
        out_shardings=sharding.replicated(run.mesh),
        compiler_options=networks.compiler_options(run.config),
    )


# ---------------------------------------------------------------------------------------
# Image files in batches
# ---------------------------------------------------------------------------------------


def list_images(inputs: Sequence[str]) -> list[str]:
    """Files as given, and every image file (by extension) under each folder, sorted."""
    out = []
    for item in inputs:
        if os.path.isdir(item):
            store = image_index.ImageStore(item)
            out += [os.path.join(store.root, p) for p in store.list_files()]
        elif os.path.exists(item):
            out.append(item)
        else:
            raise FileNotFoundError(f"{item!r} does not exist; pass image files or folders")
    return out


@dataclasses.dataclass(frozen=True)
class Batch:
    """`images` uint8 [batch_size, ...] (padding repeats a valid image); `mask` True on the
    first len(paths) rows, which are the images of `paths` in order."""

    paths: list[str]
    images: np.ndarray
    mask: np.ndarray
    indices: list[int]  # positions of `paths` in the input list


def _decode(read, prep: Preprocess, path: str):
    try:
        return prep(read(path)), None
    except Exception as e:  # Pillow raises many types for bad data; report, never crash
        return None, f"{type(e).__name__}: {e}"


def image_batches(
    paths: Sequence[str],
    prep: Preprocess,
    batch_size: int,
    *,
    read=None,
    on_skip=None,
    num_threads: int | None = None,
) -> Iterator[Batch]:
    """Padded batches of the decodable files of `paths`, in order.

    `read(path) -> bytes` (default: the file's bytes); `on_skip(path, reason)` is called for
    every file that cannot be read or decoded (default: a logged warning).
    """
    read = read or _read_file
    on_skip = on_skip or (lambda p, r: logging.warning("skipped %s: %s", p, r))
    workers = num_threads or min(8, os.cpu_count() or 1)
    decode = functools.partial(_decode, read, prep)
    shape = (prep.size, prep.size, prep.channels)
    kept_paths, kept_images, kept_indices = [], [], []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(paths), batch_size):  # bounded memory: one batch in flight
            chunk = paths[start : start + batch_size]
            for i, (path, (image, reason)) in enumerate(
                zip(chunk, pool.map(decode, chunk), strict=True), start
            ):
                if image is None:
                    on_skip(path, reason)
                    continue
                kept_paths.append(path)
                kept_images.append(image)
                kept_indices.append(i)
                if len(kept_paths) == batch_size:
                    yield _pad(kept_paths, kept_images, kept_indices, batch_size, shape)
                    kept_paths, kept_images, kept_indices = [], [], []
    if kept_paths:
        yield _pad(kept_paths, kept_images, kept_indices, batch_size, shape)


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _pad(paths, images, indices, batch_size: int, shape) -> Batch:
    out = np.empty((batch_size, *shape), np.uint8)
    out[: len(images)] = np.stack(images)
    out[len(images) :] = images[0]
    mask = np.arange(batch_size) < len(images)
    return Batch(list(paths), out, mask, list(indices))
