"""Evaluate a trained run on a labelled image folder or zip laid out as `<class>/<image>`.

    python -m ltkd_jax.evaluate --workdir runs/bkd_c100 --data=/path/to/new_images
    python -m ltkd_jax.evaluate --workdir runs/bkd_mydata --data=mydata.zip --split=test

A folder or zip laid out as `main` takes it, `<split>/<class>/<image>`, is read from its
`--split` folder (default test).

The class folders must be exactly the run's classes (extra or missing ones are an error
naming them; a single wrapping folder, as zips often have, is accepted). Images are
preprocessed as the run's evaluation preprocesses its test split (`inference.Preprocess`);
unreadable or corrupt files are reported with their path and skipped. Writes into `--out`
(default WORKDIR/evaluate/<data name>/) `report.json`, `per_class.png` and `confusion.png`
(see `report`); many / medium / few use the run's training counts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import numpy as np
from absl import logging

from ltkd_jax import cli
from ltkd_jax.data import image_index
from ltkd_jax.deploy import inference, report
from ltkd_jax.errors import UserError
from ltkd_jax.training import evaluation, networks

LAYOUT = "<class>/<image>, e.g. cat/001.jpg"
# First folders that make a three-level listing the trainer's `<split>/<class>/<image>`.
SPLIT_NAMES = ("train", "test", "val", "validation")


def class_tree(files: Sequence[str], split: str = "test") -> list[tuple[str, str]]:
    """[(relative path, class folder)] of a `<class>/<image>` listing, or of the `split`
    folder of a `<split>/<class>/<image>` one (the layout `main` trains on); one wrapping
    folder (`mydata/...`, as zips often have) is stripped."""
    rows = [f.split("/") for f in files]
    if not rows:
        raise UserError(f"no image files ({', '.join(image_index.IMAGE_EXTENSIONS)}) found")
    first = {r[0] for r in rows}
    if len(first) == 1 and all(len(r) >= 3 for r in rows) and not first & {split, *SPLIT_NAMES}:
        rows = [r[1:] for r in rows]
    if all(len(r) == 3 for r in rows) and {r[0] for r in rows} & {split, *SPLIT_NAMES}:
        splits = sorted({r[0] for r in rows})
        if split not in splits:
            raise UserError(
                f"the data is laid out as <split>/<class>/<image> with splits {splits} but "
                f"none named {split!r}; pass --split=<one of them>"
            )
        keep = [(f, r[1:]) for f, r in zip(files, rows, strict=True) if r[0] == split]
        files, rows = [f for f, _ in keep], [r for _, r in keep]
    stray = [f for f, r in zip(files, rows, strict=True) if len(r) != 2]
    if stray:
        raise UserError(
            f"{len(stray)} image files are not at {LAYOUT} (or <split>/{LAYOUT}): e.g. "
            f"{stray[:3]}. Put every image in the folder named after its class."
        )
    return [(f, r[0]) for f, r in zip(files, rows, strict=True)]


def check_classes(found: Sequence[str], expected: Sequence[str], source: str) -> None:
    """The class folders must be the run's classes, no more, no fewer."""
    extra = sorted(set(found) - set(expected))
    missing = sorted(set(expected) - set(found))
    if extra or missing:
        parts = []
        if extra:
            parts.append(f"{len(extra)} class folder(s) the run does not know: {extra[:10]}")
        if missing:
            parts.append(f"{len(missing)} of the run's classes have no folder: {missing[:10]}")
        raise UserError(
            f"{source} does not match the run's {len(expected)} classes: "
            + "; ".join(parts)
            + f". The run's classes are in its labels.json: {list(expected)[:10]}"
            + ("..." if len(expected) > 10 else "")
            + ". Rename or remove folders so the class names match."
        )


def evaluate_folder(
    workdir: str,
    data_path: str,
    out: str | None = None,
    *,
    checkpoint: str = "last",
    batch_size: int | None = None,
    split: str = "test",
) -> dict:
    """Evaluates `workdir`'s checkpoint on `data_path` (its `split` folder when it is laid
    out as `<split>/<class>/<image>`) and writes the report into `out`."""
    try:
        store = image_index.ImageStore(data_path)
        files = store.list_files()
        rows = class_tree(files, split)
    except UserError as e:
        raise UserError(f"--data={data_path}: {e}") from None
    name = _name(store.root) + (f"_{split}" if len(rows) < len(files) else "")
    run = inference.load_run(workdir, checkpoint)
    check_classes({c for _, c in rows}, run.class_names, store.root)
    label_of = {name: i for i, name in enumerate(run.class_names)}
    paths = [p for p, _ in rows]
    labels = np.asarray([label_of[c] for _, c in rows], np.int32)
    skipped = {}

    def on_skip(path: str, reason: str) -> None:
        skipped[path] = reason
        logging.warning("skipped %s: %s", os.path.join(store.root, path), reason)

    size = batch_size or run.batch_size
    size = -(-size // run.mesh.devices.size) * run.mesh.devices.size
    batches = (
        {"image": b.images, "label": _labels(labels, b), "mask": b.mask}
        for b in inference.image_batches(
            paths, run.preprocess, size, read=store.read, on_skip=on_skip
        )
    )
    evaluate = evaluation.batch_evaluator(
        run.model,
        run.mesh,
        mean=run.preprocess.mean,
        std=run.preprocess.std,
        compiler_options=networks.compiler_options(run.config),
    )
    counts = evaluate(run.variables, batches)
    result = report.build_report(
        counts,
        run.class_names,
        run.class_counts,
        run.class_groups,
        workdir=run.workdir,
        data=store.root,
        checkpoint_step=run.step,
        skipped={os.path.join(store.root, p): r for p, r in sorted(skipped.items())},
    )
    out = out or os.path.join(run.workdir, "evaluate", name)
    report.write_report(result, out, report.thresholds_of(run.task))
    result["out"] = out
    return result


def _labels(labels: np.ndarray, batch: inference.Batch) -> np.ndarray:
    """The labels of a padded batch (padding repeats the first image's)."""
    out = np.full(len(batch.mask), labels[batch.indices[0]], np.int32)
    out[: len(batch.indices)] = labels[batch.indices]
    return out


def _name(root: str) -> str:
    base = os.path.basename(root.rstrip("/"))
    return os.path.splitext(base)[0] if base.endswith(".zip") else base


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ltkd_jax.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="a finished run's workdir")
    parser.add_argument(
        "--data",
        required=True,
        help="a folder or zip of <class>/<image> files, or of <split>/<class>/<image> ones",
    )
    parser.add_argument(
        "--split", default="test", help="the split folder read from a <split>/... layout"
    )
    parser.add_argument("--out", help="report folder (default WORKDIR/evaluate/<data name>)")
    parser.add_argument("--checkpoint", default="last", help="last, best (test top-1) or a step")
    parser.add_argument("--batch_size", type=int, help="images per batch (default: the run's)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.quiet_logging()
    logging.set_verbosity(logging.WARNING)  # orbax logs a dozen lines per restore
    try:
        result = evaluate_folder(
            args.workdir,
            args.data,
            args.out,
            checkpoint=args.checkpoint,
            batch_size=args.batch_size,
            split=args.split,
        )
    except (ValueError, FileNotFoundError) as e:  # the workdir, the data, the checkpoint
        print(f"error: {e}", file=sys.stderr)
        return cli.USAGE_EXIT_CODE
    print(report.format_overall(result))
    if result["skipped"]:
        print(f"{len(result['skipped'])} unreadable images skipped (listed in report.json)")
    print(f"report written to {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
