"""The evaluation report of a run: `report.json`, `per_class.png` and `confusion.png`.

`report.json` holds the overall scores of `metrics.summarize` (top-1, top-5, NLL, many /
medium / few), one entry per class (training count, shot group, test images, accuracy =
recall, precision) and the confusion matrix (rows: true class, columns: predicted, in logit
order; left out above `evaluation.MAX_CONFUSION_CLASSES` classes). `per_class.png` plots per-class
accuracy against training count on a log axis, the plot long-tail papers use;
`confusion.png` shows the row-normalised confusion matrix with classes from head to tail.

The counts are the trainer's own (`training.evaluation`): after training, `job.run` builds
WORKDIR/report/ from the final evaluation's counts (`write_run_report`), with `labels.json`
and `preprocess.json` in the workdir; `python -m ltkd_jax.evaluate` sums the same counts over
a folder of images.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from absl import logging

from ltkd_jax import data
from ltkd_jax.deploy import inference
from ltkd_jax.runs import finished
from ltkd_jax.training import evaluation, metrics, networks, sharding

REPORT_DIR = "report"


def _finite(x):
    """NaN (a group without classes, a class never predicted) -> None, valid JSON."""
    if isinstance(x, int):
        return x
    return None if x is None or not math.isfinite(x) else float(x)


def build_report(
    counts: dict,
    class_names: Sequence[str],
    class_counts: np.ndarray,
    class_groups: np.ndarray,
    **meta,
) -> dict:
    """The report dict of summed counts; `meta` (workdir, data, step, ...) is stored as is."""
    summary = metrics.summarize(counts, class_groups)
    per_class_acc = summary.pop("per_class_acc")
    seen, correct, predicted = counts["seen"], counts["correct"], counts["predicted"]
    per_class = []
    for c, name in enumerate(class_names):
        per_class.append(
            {
                "class": name,
                "train_count": int(class_counts[c]),
                "group": metrics.GROUP_NAMES[int(class_groups[c])],
                "test_count": int(seen[c]),
                "accuracy": _finite(per_class_acc[c]) if seen[c] else None,
                "recall": _finite(per_class_acc[c]) if seen[c] else None,
                "precision": _finite(correct[c] / predicted[c]) if predicted[c] else None,
            }
        )
    out = {**meta, "overall": {k: _finite(v) for k, v in summary.items()}, "per_class": per_class}
    if "confusion" in counts:
        out["confusion_matrix"] = np.asarray(counts["confusion"]).astype(np.int64).tolist()
    return out


def write_report(report: dict, out_dir: str, thresholds: tuple[int, int] | None = None) -> None:
    """report.json, per_class.png and (with a confusion matrix) confusion.png in `out_dir`."""
    import json  # noqa: PLC0415

    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    plot_per_class(report, os.path.join(out_dir, "per_class.png"), thresholds)
    if "confusion_matrix" in report:
        plot_confusion(report, os.path.join(out_dir, "confusion.png"))


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def plot_per_class(report: dict, path: str, thresholds: tuple[int, int] | None = None) -> None:
    """Per-class accuracy against training count (log x), coloured by shot group."""
    import matplotlib  # noqa: PLC0415 (heavy; only reports need it)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = [r for r in report["per_class"] if r["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"many": "tab:blue", "medium": "tab:orange", "few": "tab:red"}
    for group, color in colors.items():
        sel = [r for r in rows if r["group"] == group]
        if sel:
            ax.scatter(
                [max(r["train_count"], 1) for r in sel],
                [100 * r["accuracy"] for r in sel],
                s=14,
                color=color,
                alpha=0.8,
                label=f"{group} ({len(sel)} classes)",
            )
    if thresholds:  # groups: many > many_threshold, few < few_threshold
        for t in thresholds:
            ax.axvline(t, color="grey", linestyle=":", linewidth=1)
    if len(rows) <= 20:
        for r in rows:
            ax.annotate(
                r["class"], (max(r["train_count"], 1), 100 * r["accuracy"]), fontsize=7, alpha=0.7
            )
    ax.set_xscale("log")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy of the class (%)")
    o = report["overall"]
    ax.set_title(
        f"top-1 {_pct(o['top1'])}  many {_pct(o['many'])}  medium {_pct(o['medium'])}  "
        f"few {_pct(o['few'])}",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def plot_confusion(report: dict, path: str) -> None:
    """Row-normalised confusion matrix (recall on the diagonal), classes ordered from the
    most to the least frequent in training; sized so 100 classes keep readable labels."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    matrix = np.asarray(report["confusion_matrix"], np.float64)
    order = np.argsort([-r["train_count"] for r in report["per_class"]], kind="stable")
    matrix = matrix[np.ix_(order, order)]
    matrix = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    names = [report["per_class"][i]["class"] for i in order]
    n = len(names)
    side = float(np.clip(0.14 * n + 2.5, 5, 24))
    fig, ax = plt.subplots(figsize=(side + 1, side))
    # sqrt colour scale: the off-diagonal errors (where the tail goes) stay visible.
    norm = matplotlib.colors.PowerNorm(0.5, vmin=0, vmax=1)
    im = ax.imshow(matrix, cmap="viridis", norm=norm, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.04, label="fraction of the true class's test images")
    step = max(1, math.ceil(n / 150))  # every label up to 150 classes
    ticks = np.arange(0, n, step)
    font = float(np.clip(700 / max(n, 1), 3, 9))
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=font)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=font)
    ax.set_xlabel("predicted class (head to tail)")
    ax.set_ylabel("true class (head to tail)")
    fig.tight_layout()
    fig.savefig(path, dpi=150 if n <= 100 else 100)
    plt.close(fig)


def thresholds_of(config: ml_collections.ConfigDict) -> tuple[int, int]:
    return int(config.data.few_threshold), int(config.data.many_threshold)


def format_overall(report: dict) -> str:
    o = report["overall"]
    return (
        f"top-1 {_pct(o['top1'])}  many {_pct(o['many'])}  medium {_pct(o['medium'])}  "
        f"few {_pct(o['few'])}  ({o['num_examples']} images)"
    )


def class_names_of(split: data.Split) -> tuple[str, ...]:
    return tuple(split.class_names) or tuple(str(i) for i in range(split.num_classes))


def _evaluate_last_checkpoint(workdir: str, run_config, test: data.Split, prep) -> dict:
    """Counts of a run's last checkpoint on its test split (a run trained before reports
    were built from the trainer's final evaluation)."""
    run = finished.load(workdir, mesh=sharding.make_mesh(run_config.num_devices))
    evaluate = evaluation.make_evaluator(
        run.model,
        test,
        run.mesh,
        batch_size=run.batch_size,
        mean=prep.mean,
        std=prep.std,
        compiler_options=networks.compiler_options(run_config),
        resident=False,
    )
    return evaluate(run.variables)


def write_run_report(
    workdir: str, task: data.TaskSplits | None = None, counts: dict | None = None
) -> dict:
    """WORKDIR/report/ of a run's last checkpoint on its own test split, plus labels.json and
    preprocess.json in WORKDIR: from `counts`, the trainer's final evaluation, when given
    (evaluated here otherwise). `task` is the run's data (read here when not given). Runs
    on every process (a collective restore and evaluation); process 0 writes the files."""
    run_config, run_task = finished.read_run_info(workdir)
    task = task or data.load_task(run_config.data)
    names = class_names_of(task.train)
    prep = inference.preprocess_for(run_config, task.test)
    if counts is None:
        counts = _evaluate_last_checkpoint(workdir, run_config, task.test, prep)
    report = build_report(
        counts,
        names,
        np.asarray(run_task["class_counts"], np.int64),
        np.asarray(run_task["class_groups"], np.int64),
        workdir=os.path.abspath(workdir),
        data=f"{run_config.data.name} test split",
        checkpoint_step=finished.checkpoint_step(workdir, "last"),
    )
    if jax.process_index() == 0:
        inference.write_metadata(workdir, names, prep)
        write_report(report, os.path.join(workdir, REPORT_DIR), thresholds_of(run_config))
        logging.info("report of %s: %s", workdir, format_overall(report))
    return report


def write_training_reports(runs: dict[str, dict | None], task: data.TaskSplits) -> None:
    """`write_run_report` for the runs a finished `job.run` trained: {workdir: the final
    evaluation's counts, None when the run was already complete}. An existing report of a
    complete run is kept. A failure is logged, not raised: the checkpoints are already
    saved, and `python -m ltkd_jax.evaluate` can write the report later."""
    for workdir, counts in runs.items():
        if counts is None and os.path.exists(os.path.join(workdir, REPORT_DIR, "report.json")):
            continue
        try:
            write_run_report(workdir, task, counts)
        except Exception:  # noqa: BLE001 (see docstring)
            logging.exception("could not write the evaluation report of %s", workdir)
