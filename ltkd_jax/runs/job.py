"""The command-line job: stage-1 teachers if the method needs them, then the run (or, for a
method of kind correction, the correction of a finished run), its summary and its report."""

from __future__ import annotations

import os

import jax
import ml_collections
from absl import logging

from ltkd_jax import methods
from ltkd_jax.deploy import report
from ltkd_jax.runs import posthoc, rundir
from ltkd_jax.training import teachers as teacher_stage
from ltkd_jax.training import trainer
from ltkd_jax.training.writers import read_metrics


def check_resume_configs(config: ml_collections.ConfigDict, workdir: str) -> None:
    """`rundir.check_resume_config` for a job's run and the teachers it trains, before any
    stage starts (so a refused student does not first resume its teachers)."""
    rundir.check_resume_config(workdir, config)
    if config.teacher.workdir:
        return
    for k, teacher_dir in enumerate(teacher_stage.teacher_workdirs(config, workdir)):
        rundir.check_resume_config(teacher_dir, teacher_stage.teacher_config(config, k))


def summarize_run(workdir: str) -> dict:
    """Final and best test results of a run, read from its metrics file (the current
    records only: those a resume replayed are dropped).

    "best" is the test record of the evaluation with the highest top-1 on the val split
    when the run has one (`selected_on` says which split chose it), else on test.
    """
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    tests = [r for r in records if r["split"] == "test"]
    if not tests:
        raise ValueError(f"no evaluation recorded in {workdir}/metrics.jsonl")
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


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The command-line job: stage 1 teachers if needed, then the run; prints the results."""
    if methods.get(config.method).kind == methods.CORRECTION:
        corrected = summarize_run(config.init.workdir)
        best = posthoc.correct_run(config, workdir, corrected["final"]["epoch"])
        rundir.write_summary(workdir, {"final": best, "best": best})
        if jax.process_index() == 0:
            print(format_summary("corrected", corrected), flush=True)
            name = f"{config.method} tau={best['tau']:g}"
            print(format_summary(name, {"final": best, "best": best}), flush=True)
        return best
    teachers = teacher_stage.prepare_teachers(config, workdir)
    stage = "stage 2, the student" if teachers else "training"
    logging.info("%s: %s in %s", stage, config.method, workdir)
    trainer.train_and_evaluate(config, workdir, teachers=teachers)
    summary = summarize_run(workdir)
    rundir.write_summary(workdir, summary)
    teacher_dirs = teacher_stage.teacher_workdirs(config, workdir)
    trained_here = [] if config.teacher.workdir else teacher_dirs
    report.write_training_reports([*trained_here, workdir])  # WORKDIR/report/, labels, ...
    if jax.process_index() == 0:
        lines = []
        for k, teacher_dir in enumerate(teacher_dirs):
            name = "teacher" if len(teachers) == 1 else f"teacher_{k}"
            lines.append(format_summary(name, summarize_run(teacher_dir)))
        lines.append(format_summary(config.method, summary))
        print("\n".join(lines), flush=True)
    return summary
