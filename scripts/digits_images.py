"""Write a finished run's test split as image files, to try `predict` and `evaluate` on.

    python scripts/digits_images.py --workdir /tmp/ltkd_quickstart --out /tmp/digits_test

The quick-start trains on scikit-learn's digits, which ship as arrays, not files. This writes
the run's own test split (the images its evaluation used) as `OUT/<class>/<index>.png`, the
layout `python -m ltkd_jax.evaluate --data` reads; `evaluate` on it gives the trainer's final
numbers exactly. Works for any run whose test split is held in RAM (digits, CIFAR, small
folders).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from PIL import Image

from ltkd_jax import cli, data
from ltkd_jax.runs import finished


def write_split(images: np.ndarray, labels: np.ndarray, names, out: str) -> int:
    """uint8 [N, H, W, C] images as OUT/<class name>/<index>.png; returns N."""
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        folder = os.path.join(out, names[label])
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            os.path.join(folder, f"{i:04d}.png")
        )
    return len(images)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="a finished run's workdir")
    parser.add_argument("--out", required=True, help="folder for <class>/<index>.png")
    args = parser.parse_args(argv)
    cli.quiet_logging()
    try:
        run_config, _ = finished.read_run_info(args.workdir)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return cli.USAGE_EXIT_CODE
    test = data.load_task(run_config.data).test
    if not hasattr(test, "images"):
        print("error: the run's test split is read per example, not held in RAM", file=sys.stderr)
        return cli.USAGE_EXIT_CODE
    names = test.class_names or tuple(str(c) for c in range(test.num_classes))
    count = write_split(test.images, test.labels, names, args.out)
    print(f"wrote {count} test images of {run_config.data.name} to {args.out}/<class>/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
