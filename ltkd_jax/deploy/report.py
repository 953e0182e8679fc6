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


def _scores(overall: dict) -> str:
    """top-1, mean-class and the three groups, in one line."""
    return (
        f"top-1 {_pct(overall['top1'])}  mean-class {_pct(overall.get('mean_class_acc'))}  "
        f"many {_pct(overall['many'])}  medium {_pct(overall['medium'])}  "
        f"few {_pct(overall['few'])}"
    )


def _fitted_limits(values: Sequence[float]) -> tuple[float, float]:
    """y limits around the data (91-100% gets the whole axis, not its top tenth), never
    beyond 0-100 plus a margin for the dots."""
    lo, hi = min(values), max(values)
    pad = max(2.0, 0.08 * (hi - lo))
    return max(-2.0, lo - pad), min(102.0, hi + pad)


def _log_ticks(lo: float, hi: float) -> list[int]:
    """1-2-5 ticks inside [lo, hi] (at least the ends' decades), at most 8: readable
    labels on a log axis that spans less than a decade or many."""
    ticks = [m * 10**e for e in range(0, 8) for m in (1, 2, 5)]
    inside = [t for t in ticks if lo <= t <= hi] or [int(lo), int(hi)]
    step = -(-len(inside) // 8)
    return inside[::step]


def plot_per_class(report: dict, path: str, thresholds: tuple[int, int] | None = None) -> None:
    """`per_class_figure`, saved to `path`."""
    import matplotlib.pyplot as plt  # noqa: PLC0415 (heavy; only reports need it)

    fig = per_class_figure(report, thresholds)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def per_class_figure(report: dict, thresholds: tuple[int, int] | None = None):
    """Per-class accuracy against training count (log x), coloured by shot group; dotted
    lines at the run's group thresholds (`thresholds_of`), (few, many)."""
    import matplotlib  # noqa: PLC0415

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
    if thresholds:  # groups: few < few_threshold, many > many_threshold
        for t, side in zip(thresholds, ("few <", "many >"), strict=True):
            ax.axvline(t, color="grey", linestyle=":", linewidth=1)
            ax.annotate(
                f"{side} {t}", (t, 1), xycoords=("data", "axes fraction"), fontsize=7,
                color="grey", rotation=90, ha="right", va="top",
            )  # fmt: skip
    if len(rows) <= 20:
        for r in rows:
            ax.annotate(
                r["class"], (max(r["train_count"], 1), 100 * r["accuracy"]), fontsize=7, alpha=0.7
            )
    counts = [max(r["train_count"], 1) for r in rows] or [1]
    ax.set_xscale("log")
    ax.set_xlim(min(counts) / 1.25, max(counts) * 1.25)
    ticks = _log_ticks(min(counts) / 1.25, max(counts) * 1.25)
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(ticks))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FixedFormatter([str(t) for t in ticks]))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(*_fitted_limits([100 * r["accuracy"] for r in rows] or [0, 100]))
    ax.set_xlabel("training images of the class (log scale)")
    ax.set_ylabel("test accuracy of the class (%)")
    ax.set_title(_scores(report["overall"]) + "\ngroups: mean per-class accuracy", fontsize=9)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


CONFUSION_TICKS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)


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
    fig, ax = plt.subplots(figsize=(side + 1, side + 0.4))
    # sqrt colour scale, white at 0: the few off-diagonal errors (where the tail's images
    # go) stay visible next to a diagonal near 100%.
    norm = matplotlib.colors.PowerNorm(0.5, vmin=0, vmax=1)
    im = ax.imshow(matrix, cmap="Blues", norm=norm, interpolation="nearest")
    bar = fig.colorbar(im, ax=ax, fraction=0.04, ticks=CONFUSION_TICKS)
    bar.ax.set_yticklabels([f"{100 * t:g}%" for t in CONFUSION_TICKS])
    bar.set_label("share of the true class's test images (square-root scale)")
    step = max(1, math.ceil(n / 150))  # every label up to 150 classes
    ticks = np.arange(0, n, step)
    font = float(np.clip(700 / max(n, 1), 3, 9))
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=90, fontsize=font)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=font)
    ax.set_xlabel("predicted class (head to tail)")
    ax.set_ylabel("true class (head to tail)")
    ax.set_title(
        "Confusion matrix, rows normalised (diagonal = per-class accuracy)\n"
        + _scores(report["overall"]),
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=150 if n <= 100 else 100)
    plt.close(fig)


def thresholds_of(task: dict) -> tuple[int, int] | None:
    """(few, many) shot thresholds a run grouped its classes by: task.json's
    `shot_thresholds` (derived for folders, data/task.py); None for `tail33` groups, which
    have no thresholds, and for runs older than the field."""
    t = task.get("shot_thresholds")
    if not t or t.get("rule") == "tail33":
        return None
    return int(t["few"]), int(t["many"])


# Printed once under results: top-1 above all three groups is correct, and surprises.
GROUPS_NOTE = (
    "groups: mean per-class accuracy of the many / medium / few classes (top-1 weighs every "
    "image, so it can sit above all three)"
)


def format_overall(report: dict) -> str:
    """The printed result: scores, test images, and what the groups mean."""
    return (
        f"{_scores(report['overall'])}  ({report['overall']['num_examples']} images)\n"
        + GROUPS_NOTE
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
        write_report(report, os.path.join(workdir, REPORT_DIR), thresholds_of(run_task))
        logging.info("report of %s: %s", workdir, _scores(report["overall"]))
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
