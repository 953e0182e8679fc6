"""Post-hoc corrections of a finished run, evaluated over a grid of tau (methods.md 4.5, 4.6).

- `tau_norm`: the classifier's class columns divided by their norm^tau, bias dropped
  (Kang et al.);
- `posthoc_la`: predictions from `z - tau * log(pi)` (Menon et al.).

Nothing is trained. Every tau's test results go to `WORKDIR/metrics.jsonl` (split
`test`, with a `tau` field) and the run's summary is the best tau. With a validation split
(a folder's val/, or data.val_fraction) tau is chosen on it (records with split `val`).
CIFAR-LT has no validation split, so there the choice is made on the test split: an
optimistic protocol, as the results table says.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ltkd_jax import losses, sharding, train
from ltkd_jax.models import cpu_ops
from ltkd_jax.writers import MetricWriter

POSTHOC = ("tau_norm", "posthoc_la")


def tau_grid(step: float = 0.1, top: float = 2.0) -> np.ndarray:
    """0, 0.1, ..., 2.0: the grid of the classifier-balancing code."""
    return np.round(np.arange(0.0, top + step / 2, step), 6)


def tau_normalized_variables(variables: dict, tau: float) -> dict:
    """The classifier kernel tau-normalised; a linear head's bias set to zero (dropped)."""
    classifier = dict(variables["params"]["classifier"])
    classifier["kernel"] = losses.tau_normalize(classifier["kernel"], tau)
    if "bias" in classifier:
        classifier["bias"] = jnp.zeros_like(classifier["bias"])
    params = {**variables["params"], "classifier": classifier}
    return {**variables, "params": params}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluates `config.init.workdir`'s last checkpoint under every tau; returns the best."""
    if not config.init.workdir:
        raise ValueError(
            f"config.method={config.method!r} corrects a finished run: set "
            "--config.init.workdir to its workdir"
        )
    mesh = sharding.make_mesh(config.num_devices)
    train_split, test_split, task, val_split, _ = train.load_task_data(config)
    num_classes = train_split.num_classes
    run_config, run_task = train.read_run_info(config.init.workdir)
    image_shape = train_split.image_shape
    train.check_compatible(
        "the run to correct",
        config.init.workdir,
        run_config,
        run_task,
        config,
        num_classes,
        image_shape,
    )
    teacher = train.load_frozen(config.init.workdir, run_config, num_classes, image_shape, mesh)
    mean, std = train.input_stats(config, image_shape)
    options = cpu_ops.compiler_options(train.cpu_kernels(config))
    eval_fn = jax.jit(
        functools.partial(train.eval_step, model=teacher.model, mean=mean, std=std),
        out_shardings=sharding.replicated(mesh),
        compiler_options=options,
    )
    batch_size = -(-config.eval_batch_size // mesh.devices.size) * mesh.devices.size
    log_prior = np.log(task.class_counts / task.class_counts.sum()).astype(np.float32)
    writer = MetricWriter(workdir)
    writer.trim_after(-1)  # every tau is evaluated again: a rerun replaces the records
    writer.write_json("config.json", config.to_dict())
    epoch = train.summarize_run(config.init.workdir)["final"]["epoch"]
    best = None
    for tau in tau_grid():
        variables, offset = teacher.variables, None
        if config.method == "tau_norm":
            variables = tau_normalized_variables(variables, float(tau))
        else:
            offset = jnp.asarray(-tau * log_prior)
        evaluate = functools.partial(eval_fn, logit_offset=offset)
        results = train.evaluate(
            evaluate, variables, test_split, mesh, batch_size, task.class_groups
        )
        writer.write_scalars(0, results, split="test", epoch=epoch, tau=float(tau))
        chooser = results
        if val_split is not None:
            chooser = train.evaluate(
                evaluate, variables, val_split, mesh, batch_size, task.class_groups
            )
            writer.write_scalars(0, chooser, split="val", epoch=epoch, tau=float(tau))
        if best is None or chooser["top1"] > best[2]:
            best = (float(tau), results, chooser["top1"])
    writer.close()
    logging.info("%s: best tau %.1f, top-1 %.4f", config.method, best[0], best[1]["top1"])
    return {"tau": best[0], "epoch": epoch, **best[1]}
