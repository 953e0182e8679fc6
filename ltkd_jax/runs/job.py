"""The command-line job: stage-1 teachers if the method needs them, then the run (or, for a
method of kind correction, the correction of a finished run), its summary and its report.

`check(config, workdir)` runs every check that needs no data and writes nothing (the config,
the paths it names, a resumed run's config and its teachers'); `run(config, workdir)` then
reads the task once and passes it to every stage.
"""

from __future__ import annotations

import jax
import ml_collections
from absl import logging

from ltkd_jax import data, methods
from ltkd_jax.config import checks
from ltkd_jax.deploy import report
from ltkd_jax.runs import cohort, finished, posthoc, rundir, summary
from ltkd_jax.runs import teachers as teacher_stage
from ltkd_jax.training import checkpointing, sharding, trainer


def check(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Everything checkable before any data is read or anything written: the config
    (`checks.validate_config`) and the finished runs and data it names. A cohort config
    checks every member (`runs.cohort.check`)."""
    if cohort.is_cohort(config):
        return cohort.check(config, workdir)
    checks.validate_config(config)
    checks.check_run_paths(config)
    return None


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """For a resumed run, that its config and data (and its stage-1 teachers') still mean
    the same checkpoints, before any stage starts (so a refused student does not first
    resume its teachers) and before a changed folder is prepared again. Returns the changes
    config.resume_overrides let through. A cohort checks every member."""
    if cohort.is_cohort(config):
        return cohort.check_resume(config, workdir)
    fingerprint = data.source_fingerprint(config.data)
    overridden = rundir.check_resume_config(workdir, config)
    checkpointing.check_resume_data(workdir, fingerprint)
    if config.teacher.workdir:
        return overridden
    for k, teacher_dir in enumerate(teacher_stage.teacher_workdirs(config, workdir)):
        teacher = teacher_stage.teacher_config(config, k)
        overridden = {**rundir.check_resume_config(teacher_dir, teacher), **overridden}
        checkpointing.check_resume_data(teacher_dir, fingerprint)
    return overridden


def with_notes(run_summary: dict, workdir: str, warnings: list[str]) -> dict:
    """The summary plus what its reader must know about how it was reached: unfinished
    teacher / init runs used anyway, and the fields resumes changed (resume_overrides,
    from invocations.jsonl)."""
    notes = {"warnings": warnings, "resume_overrides": rundir.recorded_overrides(workdir)}
    return {**run_summary, **{key: value for key, value in notes.items() if value}}


def _print_corrected(config: ml_collections.ConfigDict, best: dict) -> None:
    print(
        summary.format_summary("corrected", summary.summarize_run(config.init.workdir)),
        flush=True,
    )
    name = f"{config.method} tau={best['tau']:g}"
    print(summary.format_summary(name, {"final": best, "best": best}), flush=True)


def run(
    config: ml_collections.ConfigDict, workdir: str, *, brief: bool = False
) -> dict | list[dict]:
    """The command-line job, after `check` and `check_resume`: stage 1 teachers if needed,
    then the run; writes its summary and report and prints the results: the teachers'
    lines, the run's, and what the groups mean (`brief`: the run's line only; compare.py
    shows the shared teacher and the groups once, in its table). A cohort config trains
    every member in one program (`runs.cohort.run`)."""
    if cohort.is_cohort(config):
        return cohort.run(config, workdir)
    task = data.load_task(config.data)  # once, for every stage
    warnings = finished.allowed_unfinished(config)  # as the inputs are when read
    if methods.get(config.method).kind == methods.CORRECTION:
        best = posthoc.correct_run(config, workdir, task)
        summary.write_summary(workdir, with_notes({"final": best, "best": best}, workdir, warnings))
        if jax.process_index() == 0:
            _print_corrected(config, best)
        return best
    mesh = sharding.make_mesh(config.num_devices)
    teachers, trained = teacher_stage.prepare_teachers(config, workdir, task, mesh)
    init = finished.load_init(config, task, mesh).variables if config.init.workdir else None
    stage = "stage 2, the student" if teachers else "training"
    logging.info("%s: %s in %s", stage, config.method, workdir)
    result = trainer.train_and_evaluate(config, workdir, teachers=teachers, task=task, init=init)
    run_summary = summary.summarize_run(workdir, final_step=int(result.state.step))
    summary.write_summary(workdir, with_notes(run_summary, workdir, warnings))
    for teacher_dir in trained:
        summary.write_summary(teacher_dir, summary.summarize_run(teacher_dir))
    report.write_training_reports({**trained, workdir: result.test_counts}, task)
    if jax.process_index() == 0:
        teacher_dirs = () if brief else teacher_stage.teacher_workdirs(config, workdir)
        lines = [
            summary.format_summary(
                "teacher" if len(teacher_dirs) == 1 else f"teacher_{k}",
                summary.summarize_run(teacher_dir),
            )
            for k, teacher_dir in enumerate(teacher_dirs)
        ]
        lines.append(summary.format_summary(config.method, run_summary))
        print("\n".join(lines if brief else [*lines, report.GROUPS_NOTE]), flush=True)
    return run_summary
