"""Input-pipeline throughput: images/second per host for ImageNet-style decoding + augmentation.

    python scripts/benchmark_input.py --workers=0,1,2 --num_images=300 --batch_size=64

Generates `--num_images` realistic JPEGs (default ~500x375, quality 90, smooth content) into a
temp image-folder tree, prepares it with the TF-free folder builder (ArrayRecord), and times
`data.make_train_iterator(..., augment='imagenet')` (JPEG decode + random-resized crop +
flip at `--image_size`) with N grain worker processes, plus the evaluation path (resize +
centre crop). To time real data instead, point `--root` at a prepared-able image tree (or a
benchmark image root with `--dataset=imagenet_lt --list_dir=...`) and `--data_dir` at its
TFDS directory. Prints one table row per setting.
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np
from absl import app, flags
from PIL import Image

from ltkd_jax import data

_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "grain worker counts to time.")
_THREADS = flags.DEFINE_integer("threads", 0, "Reader threads per process (0 = default).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 300, "Generated JPEGs (without --root).")
_BATCH = flags.DEFINE_integer("batch_size", 64, "Per-host batch size.")
_STEPS = flags.DEFINE_integer("steps", 15, "Timed batches per setting (after 2 warm-up).")
_SIZE = flags.DEFINE_integer("image_size", 224, "Output side.")
_ROOT = flags.DEFINE_string("root", "", "An image tree/zip (or benchmark image root).")
_DATASET = flags.DEFINE_string("dataset", "folder", "folder | imagenet_lt | places_lt | inat2018")
_LIST_DIR = flags.DEFINE_string("list_dir", "", "List files for a list-file benchmark.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "TFDS data_dir (default: a temp dir).")


def generate_tree(root: str, n: int, num_classes: int = 10, seed: int = 0) -> None:
    """ImageNet-like JPEGs: 500x375 / 375x500, smooth gradients plus noise (real-ish entropy)."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        split = "test" if (i // num_classes) % 10 == 0 else "train"
        cls = f"c{i % num_classes}"
        os.makedirs(os.path.join(root, split, cls), exist_ok=True)
        h, w = (375, 500) if i % 3 else (500, 375)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([np.sin(xx / rng.uniform(20, 80) + c) for c in range(3)], -1) * 90 + 128
        noise = rng.normal(0, 18, (h, w, 3))
        image = np.clip(base + noise + yy[..., None] / h * 40, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(root, split, cls, f"{i:05d}.jpg"), quality=90)


def time_iterator(iterator, steps: int, batch_size: int) -> float:
    for _ in range(2):  # warm-up: worker start, first reads
        next(iterator)
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch_size / (time.perf_counter() - start)


def main(argv):
    del argv
    tmp = tempfile.mkdtemp(prefix="ltkd_bench_")
    root = _ROOT.value
    if not root:
        root = os.path.join(tmp, "images")
        t0 = time.perf_counter()
        generate_tree(root, _NUM_IMAGES.value)
        print(f"generated {_NUM_IMAGES.value} JPEGs in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    train, test, *_ = data.load_dataset(
        _DATASET.value,
        data_dir=_DATA_DIR.value or os.path.join(tmp, "tfds"),
        archive=root,
        list_dir=_LIST_DIR.value,
        image_size=_SIZE.value,
        in_memory="no",
    )
    print(
        f"prepared/opened {len(train)} train + {len(test)} test in {time.perf_counter() - t0:.1f}s"
    )
    print(f"host CPUs: {os.cpu_count()}; batch {_BATCH.value}; {_SIZE.value}x{_SIZE.value}")
    print(f"{'path':<34}{'workers':>8}{'images/s':>12}")
    for workers in map(int, _WORKERS.value):
        it, _ = data.make_train_iterator(
            train,
            global_batch_size=_BATCH.value,
            sampler="instance",
            seed=0,
            num_epochs=100,
            augment="imagenet",
            num_workers=workers,
            num_threads=_THREADS.value or None,
        )
        rate = time_iterator(it, _STEPS.value, _BATCH.value)
        print(f"{'train: decode+RRC+flip':<34}{workers:>8}{rate:>12.0f}", flush=True)
        del it
    start = time.perf_counter()
    n = sum(len(b["label"]) for b in data.eval_batches(test, batch_size=_BATCH.value))
    rate = n / (time.perf_counter() - start)
    print(f"{'eval: decode+resize+centre crop':<34}{'threads':>8}{rate:>12.0f}")


if __name__ == "__main__":
    app.run(main)
