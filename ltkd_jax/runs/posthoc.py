"""Running a correction of a finished run (a registry entry of kind `methods.CORRECTION`:
tau-norm, post-hoc logit adjustment; ltkd_jax/methods/posthoc.py): the run's last checkpoint
evaluated under every tau of the grid, the best tau chosen on the val split when there is
one, else on test."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ltkd_jax import data, methods
from ltkd_jax.methods import posthoc
from ltkd_jax.models import cpu_ops
from ltkd_jax.runs import finished
from ltkd_jax.training import evaluation, networks, sharding
from ltkd_jax.training.writers import MetricWriter


def correct_run(config: ml_collections.ConfigDict, workdir: str, epoch: int) -> dict:
    """Evaluates `config.init.workdir`'s last checkpoint (trained for `epoch` epochs) under
    every tau with the correction `config.method`; returns the best."""
    spec = methods.get(config.method)  # config.checks made sure init.workdir is set
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
    best = None
    for tau in posthoc.tau_grid():
        variables, offset = spec.correct(teacher.variables, tau, log_prior)
        evaluate = functools.partial(
            eval_fn, logit_offset=None if offset is None else jnp.asarray(offset)
        )
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
