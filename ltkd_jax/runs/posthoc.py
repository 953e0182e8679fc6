"""Running a correction of a finished run (a registry entry of kind `methods.CORRECTION`:
tau-norm, post-hoc logit adjustment; ltkd_jax/methods/posthoc.py): the run's last checkpoint
evaluated under every tau of the grid, the best tau chosen on the val split when there is
one, else on test."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ltkd_jax import data, methods
from ltkd_jax.methods import posthoc as corrections
from ltkd_jax.runs import finished, summary
from ltkd_jax.training import evaluation, metrics, networks, sharding
from ltkd_jax.training.writers import MetricWriter


def correct_run(config: ml_collections.ConfigDict, workdir: str, task: data.TaskSplits) -> dict:
    """Evaluates `config.init.workdir`'s last checkpoint under every tau with the correction
    `config.method`; returns the best."""
    spec = methods.get(config.method)  # config.checks made sure init.workdir is set
    mesh = sharding.make_mesh(config.num_devices)
    run = finished.load_init(config, task, mesh)
    mean, std = data.input_stats(config.data, task.train.image_shape[-1])
    evaluators = {
        name: evaluation.make_evaluator(
            run.model,
            split,
            mesh,
            batch_size=run.batch_size,
            mean=mean,
            std=std,
            compiler_options=networks.compiler_options(config),
            resident=config.data.device_resident,
        )
        for name, split in (("test", task.test), ("val", task.val))
        if split is not None
    }
    log_prior = np.log(task.class_counts / task.class_counts.sum()).astype(np.float32)
    writer = MetricWriter(workdir)
    writer.trim_after(-1)  # every tau is evaluated again: a rerun replaces the records
    writer.write_json("config.json", config.to_dict())
    epoch = summary.summarize_run(run.workdir)["final"]["epoch"]
    best = None
    for tau in corrections.tau_grid():
        variables, offset = spec.correct(run.variables, tau, log_prior)
        offset = None if offset is None else jnp.asarray(offset)
        results = {}
        for name, evaluate in evaluators.items():
            counts = evaluate(variables, logit_offset=offset)
            results[name] = metrics.summarize(counts, task.class_groups)
            writer.write_scalars(0, results[name], split=name, epoch=epoch, tau=float(tau))
        chooser = results.get("val", results["test"])  # tau is chosen on val when there is one
        if best is None or chooser["top1"] > best[2]:
            best = (float(tau), results["test"], chooser["top1"])
    writer.close()
    logging.info("%s: best tau %.1f, top-1 %.4f", config.method, best[0], best[1]["top1"])
    return {"tau": best[0], "epoch": epoch, **best[1]}
