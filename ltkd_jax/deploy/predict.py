"""Classify image files with a trained run.

    python -m ltkd_jax.predict --workdir runs/bkd_c100 photo.jpg more_photos/ --top_k=3
    python -m ltkd_jax.predict --workdir runs/bkd_c100 --checkpoint=best --output=preds.csv dir/

Loads the run's last checkpoint (or `--checkpoint=best` / a step) read-only and preprocesses
every file exactly as the run's evaluation does (`inference.Preprocess`): PNG, JPEG and the
other Pillow formats, grayscale / RGBA / palette images converted. Folders are searched
recursively for image files (by extension; how many other files were left out is printed).
Prints one line per image with the top-k classes and their softmax probabilities;
`--output` also writes a CSV (`path, class_1, prob_1, ...`). Files that cannot be read or
decoded are reported with their path and skipped. Runs batched on
whatever JAX device is present (CPU or GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from absl import logging

from ltkd_jax import cli
from ltkd_jax.data import image_index
from ltkd_jax.deploy import inference
from ltkd_jax.training import sharding


@dataclasses.dataclass(frozen=True)
class Prediction:
    path: str
    classes: tuple[str, ...]  # top-k class names, most probable first
    probs: tuple[float, ...]
    logits: np.ndarray  # float32 [num_classes]


def predict_files(
    run: inference.LoadedRun,
    paths: Sequence[str],
    *,
    top_k: int = 5,
    batch_size: int | None = None,
    on_skip=None,
) -> Iterator[Prediction]:
    """Predictions for the decodable files of `paths`, in order; `on_skip(path, reason)` is
    called for the others."""
    forward = inference.logits_fn(run)
    k = min(top_k, run.num_classes)
    devices = run.mesh.devices.size
    size = -(-(batch_size or run.batch_size) // devices) * devices
    for batch in inference.image_batches(paths, run.preprocess, size, on_skip=on_skip):
        images = sharding.global_batch(run.mesh, {"image": batch.images})["image"]
        logits = np.asarray(jax.device_get(forward(run.variables, images)))[: len(batch.paths)]
        probs = _softmax(logits.astype(np.float64))
        top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        for path, row, p, z in zip(batch.paths, top, probs, logits, strict=True):
            yield Prediction(
                path, tuple(run.class_names[c] for c in row), tuple(float(p[c]) for c in row), z
            )


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def format_prediction(p: Prediction) -> str:
    return f"{p.path}: " + ", ".join(
        f"{c} {100 * q:.1f}%" for c, q in zip(p.classes, p.probs, strict=True)
    )


def csv_header(top_k: int) -> list[str]:
    return ["path"] + [f"{name}_{i}" for i in range(1, top_k + 1) for name in ("class", "prob")]


def csv_row(p: Prediction) -> list[str]:
    return [p.path] + [x for c, q in zip(p.classes, p.probs, strict=True) for x in (c, f"{q:.6f}")]


def non_image_files(inputs: Sequence[str]) -> list[str]:
    """The files under the folders of `inputs` that are not read as images (by extension)."""
    out = []
    for item in inputs:
        if os.path.isdir(item):
            store = image_index.ImageStore(item)
            out += [os.path.join(store.root, p) for p in store.other_files()]
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ltkd_jax.predict", description=__doc__.split("\n")[0]
    )
    parser.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--workdir", required=True, help="a finished run's workdir")
    parser.add_argument("--checkpoint", default="last", help="last, best (test top-1) or a step")
    parser.add_argument("--top_k", type=int, default=5, help="classes printed per image")
    parser.add_argument("--output", help="also write the predictions to this CSV file")
    parser.add_argument("--batch_size", type=int, help="images per batch (default: the run's)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.quiet_logging()
    logging.set_verbosity(logging.WARNING)  # orbax logs a dozen lines per restore
    skipped = []

    def on_skip(path: str, reason: str) -> None:
        skipped.append(path)
        print(f"skipped {path}: {reason}", file=sys.stderr, flush=True)

    try:
        paths = inference.list_images(args.inputs)
        others = non_image_files(args.inputs)
        run = inference.load_run(args.workdir, args.checkpoint)
    except (ValueError, FileNotFoundError) as e:  # the inputs, the workdir, the checkpoint
        print(f"error: {e}", file=sys.stderr)
        return cli.USAGE_EXIT_CODE
    if others:
        print(
            f"{len(others)} files in the folders are not images by their extension "
            f"({', '.join(image_index.IMAGE_EXTENSIONS)}) and were left out, e.g. {others[:3]}",
            file=sys.stderr,
        )
    k = min(args.top_k, run.num_classes)
    count = 0
    with contextlib.ExitStack() as stack:
        writer = None
        if args.output:
            writer = csv.writer(stack.enter_context(open(args.output, "w", newline="")))
            writer.writerow(csv_header(k))
        for p in predict_files(run, paths, top_k=k, batch_size=args.batch_size, on_skip=on_skip):
            print(format_prediction(p), flush=True)
            if writer is not None:
                writer.writerow(csv_row(p))
            count += 1
    print(
        f"{count} images classified, {len(skipped)} unreadable ones skipped, "
        f"{len(others)} non-image files left out"
        + (f"; CSV written to {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
