"""The command-line job: stage-1 teachers if the method needs them, then the run (or a
post-hoc correction of a finished one), its summary and its report."""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ltkd_jax import data
from ltkd_jax.deploy import report
from ltkd_jax.methods import posthoc
from ltkd_jax.models import cpu_ops
from ltkd_jax.runs import finished, rundir
from ltkd_jax.training import evaluation, networks, sharding, trainer
from ltkd_jax.training import teachers as teacher_stage
from ltkd_jax.training.writers import MetricWriter, read_metrics


def check_resume_configs(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """`rundir.check_resume_config` for a job's run and the teachers it trains, before any
    stage starts (so a refused student does not first resume its teachers). Returns the
    changes config.resume_overrides let through, of the run or of a teacher."""
    overridden = rundir.check_resume_config(workdir, config)
    if config.method in posthoc.POSTHOC or config.teacher.workdir:
        return overridden
    for k, teacher_dir in enumerate(teacher_stage.teacher_workdirs(config, workdir)):
        teacher = teacher_stage.teacher_config(config, k)
        overridden = {**rundir.check_resume_config(teacher_dir, teacher), **overridden}
    return overridden


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


def correct_run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluates `config.init.workdir`'s last checkpoint under every tau; returns the best."""
    if not config.init.workdir:
        raise ValueError(
            f"config.method={config.method!r} corrects a finished run: set "
            "--config.init.workdir to its workdir"
        )
    finished.check_finished(
        config.init.workdir, "the init run", "init", config.init.allow_unfinished
    )
    mesh = sharding.make_mesh(config.num_devices)
    task = data.load_task(config.data)
    train_split, test_split, val_split = task.train, task.test, task.val
    num_classes = train_split.num_classes
    run_config, run_task = finished.read_run_info(config.init.workdir)
    image_shape = train_split.image_shape
    finished.check_compatible(
        "the run to correct",
        config.init.workdir,
        run_config,
        run_task,
        config,
        num_classes,
        image_shape,
    )
    teacher = finished.load_frozen(config.init.workdir, run_config, num_classes, image_shape, mesh)
    mean, std = data.input_stats(config.data, image_shape[-1])
    options = cpu_ops.compiler_options(networks.cpu_kernels(config))
    eval_fn = jax.jit(
        functools.partial(evaluation.eval_step, model=teacher.model, mean=mean, std=std),
        out_shardings=sharding.replicated(mesh),
        compiler_options=options,
    )
    batch_size = -(-config.eval_batch_size // mesh.devices.size) * mesh.devices.size
    log_prior = np.log(task.class_counts / task.class_counts.sum()).astype(np.float32)
    writer = MetricWriter(workdir)
    writer.trim_after(-1)  # every tau is evaluated again: a rerun replaces the records
    writer.write_json("config.json", config.to_dict())
    epoch = summarize_run(config.init.workdir)["final"]["epoch"]
    best = None
    for tau in posthoc.tau_grid():
        variables, offset = teacher.variables, None
        if config.method == "tau_norm":
            variables = posthoc.tau_normalized_variables(variables, float(tau))
        else:
            offset = jnp.asarray(-tau * log_prior)
        evaluate = functools.partial(eval_fn, logit_offset=offset)
        results = evaluation.evaluate(
            evaluate, variables, test_split, mesh, batch_size, task.class_groups
        )
        writer.write_scalars(0, results, split="test", epoch=epoch, tau=float(tau))
        chooser = results
        if val_split is not None:
            chooser = evaluation.evaluate(
                evaluate, variables, val_split, mesh, batch_size, task.class_groups
            )
            writer.write_scalars(0, chooser, split="val", epoch=epoch, tau=float(tau))
        if best is None or chooser["top1"] > best[2]:
            best = (float(tau), results, chooser["top1"])
    writer.close()
    logging.info("%s: best tau %.1f, top-1 %.4f", config.method, best[0], best[1]["top1"])
    return {"tau": best[0], "epoch": epoch, **best[1]}


def with_notes(summary: dict, workdir: str, warnings: list[str]) -> dict:
    """The summary plus what its reader must know about how it was reached: unfinished
    teacher / init runs used anyway, and the fields resumes changed (resume_overrides,
    from invocations.jsonl)."""
    notes = {"warnings": warnings, "resume_overrides": rundir.recorded_overrides(workdir)}
    return {**summary, **{key: value for key, value in notes.items() if value}}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The command-line job: stage 1 teachers if needed, then the run; prints the results."""
    warnings = finished.allowed_unfinished(config)  # as the inputs are when read
    if config.method in posthoc.POSTHOC:
        best = correct_run(config, workdir)
        rundir.write_summary(workdir, with_notes({"final": best, "best": best}, workdir, warnings))
        if jax.process_index() == 0:
            print(format_summary("corrected", summarize_run(config.init.workdir)), flush=True)
            name = f"{config.method} tau={best['tau']:g}"
            print(format_summary(name, {"final": best, "best": best}), flush=True)
        return best
    teachers = teacher_stage.prepare_teachers(config, workdir)
    stage = "stage 2, the student" if teachers else "training"
    logging.info("%s: %s in %s", stage, config.method, workdir)
    state = trainer.train_and_evaluate(config, workdir, teachers=teachers)
    summary = summarize_run(workdir, final_step=int(state.step))
    rundir.write_summary(workdir, with_notes(summary, workdir, warnings))
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
