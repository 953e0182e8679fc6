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


def check_resume_configs(config: ml_collections.ConfigDict, workdir: str) -> None:
    """`rundir.check_resume_config` and `check_resume_data` for a job's run and the teachers
    it trains, before any stage starts (so a refused student does not first resume its
    teachers) and before a changed folder is prepared again."""
    fingerprint = data.source_fingerprint(config.data)
    rundir.check_resume_config(workdir, config)
    rundir.check_resume_data(workdir, fingerprint)
    if config.method in posthoc.POSTHOC or config.teacher.workdir:
        return
    for k, teacher_dir in enumerate(teacher_stage.teacher_workdirs(config, workdir)):
        rundir.check_resume_config(teacher_dir, teacher_stage.teacher_config(config, k))
        rundir.check_resume_data(teacher_dir, fingerprint)


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


def correct_run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluates `config.init.workdir`'s last checkpoint under every tau; returns the best."""
    if not config.init.workdir:
        raise ValueError(
            f"config.method={config.method!r} corrects a finished run: set "
            "--config.init.workdir to its workdir"
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


def run(config: ml_collections.ConfigDict, workdir: str, *, brief: bool = False) -> dict:
    """The command-line job: stage 1 teachers if needed, then the run; prints the results:
    the teachers' lines, the run's, and what the groups mean (`brief`: the run's line only;
    compare.py shows the shared teacher and the groups once, in its table)."""
    if config.method in posthoc.POSTHOC:
        best = correct_run(config, workdir)
        rundir.write_summary(workdir, {"final": best, "best": best})
        if jax.process_index() == 0:
            print(format_summary("corrected", summarize_run(config.init.workdir)), flush=True)
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
    for teacher_dir in trained_here:
        rundir.write_summary(teacher_dir, summarize_run(teacher_dir))
    report.write_training_reports([*trained_here, workdir])  # WORKDIR/report/, labels, ...
    if jax.process_index() == 0:
        lines = []
        for k, teacher_dir in enumerate(() if brief else teacher_dirs):
            name = "teacher" if len(teachers) == 1 else f"teacher_{k}"
            lines.append(format_summary(name, summarize_run(teacher_dir)))
        lines.append(format_summary(config.method, summary))
        print("\n".join(lines if brief else [*lines, report.GROUPS_NOTE]), flush=True)
    return summary
