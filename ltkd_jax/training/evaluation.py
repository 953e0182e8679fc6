"""Evaluation: per-class counts of a model over a split, every image exactly once on any
number of processes (padding masked), from host batches or in one jitted call over a
device-resident split; and the teacher's class feature means KRDistill needs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ltkd_jax import data
from ltkd_jax.data import device as device_data
from ltkd_jax.models import cpu_ops
from ltkd_jax.training import metrics, networks, sharding


def eval_step(
    variables: dict,
    batch: dict,
    logit_offset: jnp.ndarray | None = None,
    *,
    model,
    mean: tuple,
    std: tuple,
) -> dict:
    """Per-class counts of one test batch; `logit_offset` [C] is added first (post-hoc LA)."""
    logits, _ = model.apply(variables, data.normalize(batch["image"], mean, std), train=False)
    if logit_offset is not None:
        logits = logits.astype(jnp.float32) + logit_offset
    return metrics.eval_counts(logits, batch["label"], batch["mask"])


def _sum_eval_counts(eval_fn, variables, test_split, mesh, batch_size: int) -> dict:
    """Per-class counts over every test image exactly once, on any number of processes
    (padding is masked), batches fed from the host."""
    counts = None
    for local in data.eval_batches(
        test_split,
        batch_size=batch_size,  # global; each process yields its slice
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        counts = metrics.add_counts(counts, eval_fn(variables, sharding.global_batch(mesh, local)))
    return counts


def evaluate(eval_fn, variables, test_split, mesh, batch_size: int, class_groups) -> dict:
    """Every test image exactly once, on any number of processes (padding is masked)."""
    counts = _sum_eval_counts(eval_fn, variables, test_split, mesh, batch_size)
    return metrics.summarize(counts, class_groups)


def evaluate_resident(
    variables: dict, layout: dict, logit_offset=None, *, model, mean: tuple, std: tuple
) -> dict:
    """Summed `eval_step` counts over a device-resident test split ([N, B, ...] layout)."""
    step = functools.partial(eval_step, model=model, mean=mean, std=std)
    first = jax.tree.map(lambda x: x[0], layout)
    zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(step, variables, first, logit_offset)
    )

    def body(total, batch):
        counts = step(variables, batch, logit_offset)
        return jax.tree.map(jnp.add, total, counts), None

    return jax.lax.scan(body, zeros, layout)[0]


def make_evaluator(config, mesh, model, split, batch_size: int, mean: tuple, std: tuple):
    """variables -> summed per-class counts over `split` (one call when resident)."""
    repl = sharding.replicated(mesh)
    options = cpu_ops.compiler_options(networks.cpu_kernels(config))
    if config.data.device_resident and isinstance(split, data.ArraySplit):
        layout = device_data.eval_layout(split, batch_size, mesh)
        p_eval = jax.jit(
            functools.partial(evaluate_resident, model=model, mean=mean, std=std),
            out_shardings=repl,
            compiler_options=options,
        )
        return lambda variables: jax.device_get(p_eval(variables, layout))
    p_eval_step = jax.jit(
        functools.partial(eval_step, model=model, mean=mean, std=std),
        out_shardings=repl,
        compiler_options=options,
    )
    return lambda variables: _sum_eval_counts(p_eval_step, variables, split, mesh, batch_size)


def class_feature_means(
    teacher: networks.Teacher, split, mesh, batch_size: int, mean: tuple, std: tuple
) -> np.ndarray:
    """Per-class mean teacher feature on un-augmented training images (KRDistill-R,
    ltkd_jax/methods/krdistill.py)."""

    @jax.jit
    def sums(variables, batch):
        images = data.normalize(batch["image"], mean, std)
        _, features = teacher.model.apply(variables, images, train=False)
        onehot = jax.nn.one_hot(batch["label"], split.num_classes) * batch["mask"][:, None]
        return onehot.T @ features.astype(jnp.float32), onehot.sum(0)

    totals = None
    for local in data.eval_batches(
        split,
        batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    ):
        totals = metrics.add_counts(
            totals, sums(teacher.variables, sharding.global_batch(mesh, local))
        )
    feature_sums, counts = totals
    return feature_sums / np.maximum(counts, 1)[:, None]
