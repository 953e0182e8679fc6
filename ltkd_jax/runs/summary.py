"""A run's results: `summarize_run` reads the final and best evaluation from its
metrics.jsonl, `write_summary` stores them as WORKDIR/summary.json, `format_summary` prints
one line of them."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax

from ltkd_jax.runs import rundir
from ltkd_jax.training.writers import read_metrics


def summarize_run(workdir: str, final_step: int | None = None) -> dict:
    """Final and best test results of a run, read from its metrics file (the current
    records only: those a resume replayed are dropped).

    "best" is the test record of the evaluation with the highest top-1 on the val split
    when the run has one (`selected_on` says which split chose it), else on test.
    `final_step`: the step the run ended at; a metrics file without its test record is an
    error rather than a summary of an earlier epoch (the trainer writes a lost one again).
    """
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    tests = [r for r in records if r["split"] == "test"]
    if not tests:
        raise ValueError(f"no evaluation recorded in {workdir}/metrics.jsonl")
    if final_step is not None and tests[-1]["step"] != final_step:
        raise ValueError(
            f"{workdir}/metrics.jsonl has no test record of the final step {final_step} (its "
            f"last is step {tests[-1]['step']}); rerun the same command: it evaluates the "
            "final checkpoint again and writes the record"
        )
    vals = [r for r in records if r["split"] == "val"]
    if vals:
        chosen = max(vals, key=lambda r: r["top1"])["step"]
        best = next(r for r in tests if r["step"] == chosen)
    else:
        best = max(tests, key=lambda r: r["top1"])
    return {"final": tests[-1], "best": best, "selected_on": "val" if vals else "test"}


def format_summary(name: str, summary: dict) -> str:
    def pct(x):
        return "  n/a" if x is None or x != x else f"{100 * x:5.1f}"

    final, best = summary["final"], summary["best"]
    chosen = f", chosen on {summary.get('selected_on', 'test')}"
    return (
        f"{name:<10} final (epoch {final['epoch']}): top-1 {pct(final['top1'])}%  "
        f"mean-class {pct(final.get('mean_class_acc'))}%  many {pct(final['many'])}%  "
        f"medium {pct(final['medium'])}%  few {pct(final['few'])}%"
        f"  | best top-1 {pct(best['top1'])}% (epoch {best['epoch']}{chosen})"
    )


def write_summary(workdir: str, summary: Mapping) -> None:
    """WORKDIR/summary.json: the final and best evaluations (top-1, many / medium / few);
    written by process 0."""
    if not rundir.is_local(workdir) or jax.process_index() != 0:
        return
    path = os.path.join(workdir, "summary.json")
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=2, default=str)
    os.replace(path + ".tmp", path)  # a kill mid-write leaves the previous summary
