"""Evaluation: the one way a model is evaluated, by the trainer, the post-hoc corrections,
`python -m ltkd_jax.evaluate` and the report.

`eval_step` turns one batch into summed counts (`metrics.eval_counts`: per-class seen /
correct / top-5 / predicted, NLL, the confusion matrix and, for a distillation run, the
agreement with the teacher); `make_evaluator` sums them over a split, every image exactly
once on any number of processes (padding masked), in one jitted call when the split lives on
the devices; `sum_over_batches` sums any such step over host batches (image files, a
record split). The host turns the counts into accuracies (`metrics.summarize`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from ltkd_jax import data
from ltkd_jax.data import device as device_data
from ltkd_jax.training import metrics, networks, sharding, steps

# The [C, C] confusion matrix is summed per batch and stored in report.json up to this many
# classes (iNaturalist's 8,142 would be 265 MB of counts).
MAX_CONFUSION_CLASSES = 1000

Counts = dict


def eval_step(
    variables: dict,
    teachers: tuple[networks.Teacher, ...],
    batch: dict,
    logit_offset: jnp.ndarray | None = None,
    *,
    model,
    mean: tuple,
    std: tuple,
) -> Counts:
    """Summed counts of one batch; `logit_offset` [C] is added to the logits first
    (post-hoc logit adjustment); with `teachers`, the agreement with the first one."""
    images = data.normalize(batch["image"], mean, std)
    logits, _ = model.apply(variables, images, train=False)
    logits = logits.astype(jnp.float32)
    if logit_offset is not None:
        logits = logits + logit_offset
    teacher_logits = steps.apply_teachers(teachers[:1], images)[0].logits if teachers else None
    return metrics.eval_counts(
        logits,
        batch["label"],
        batch["mask"],
        confusion=logits.shape[-1] <= MAX_CONFUSION_CLASSES,
        teacher_logits=teacher_logits,
    )


def sum_over_batches(step: Callable, args: tuple, batches: Iterable[dict], mesh) -> Counts:
    """`step(*args, global_batch)` summed over this process's slices of global batches
    {image, label, mask}."""
    total = None
    for local in batches:
        total = metrics.add_counts(total, step(*args, sharding.global_batch(mesh, local)))
    if total is None:
        raise ValueError("no image to evaluate")
    return total


def split_batches(split: data.Split, batch_size: int) -> Iterable[dict]:
    """This process's slices of the padded global evaluation batches of `split`."""
    return data.eval_batches(
        split,
        batch_size=batch_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def _scan_resident(step: Callable, variables, teachers, layout: dict, logit_offset) -> Counts:
    """`step` summed over a device-resident split ([N, B, ...] layout) in one `lax.scan`."""
    first = jax.tree.map(lambda x: x[0], layout)
    zeros = jax.tree.map(
        lambda s: jnp.zeros(s.shape, s.dtype),
        jax.eval_shape(step, variables, teachers, first, logit_offset),
    )

    def body(total, batch):
        counts = step(variables, teachers, batch, logit_offset)
        return jax.tree.map(jnp.add, total, counts), None

    return jax.lax.scan(body, zeros, layout)[0]


def batch_evaluator(
    model, mesh, *, mean: tuple, std: tuple, compiler_options: dict | None = None
) -> Callable[..., Counts]:
    """evaluate(variables, batches, teachers=(), logit_offset=None) -> `eval_step` counts
    summed over host batches: this process's slices of padded global batches {image, label,
    mask} (a record split's, or image files'). Compiled once."""
    p_step = jax.jit(
        functools.partial(eval_step, model=model, mean=mean, std=std),
        out_shardings=sharding.replicated(mesh),
        compiler_options=compiler_options,
    )

    def evaluate(variables, batches, teachers=(), logit_offset=None) -> Counts:
        step = functools.partial(p_step, logit_offset=logit_offset)
        return sum_over_batches(step, (variables, teachers), batches, mesh)

    return evaluate


def make_evaluator(
    model,
    split: data.Split,
    mesh,
    *,
    batch_size: int,
    mean: tuple,
    std: tuple,
    compiler_options: dict | None = None,
    resident: bool = True,
) -> Callable[..., Counts]:
    """evaluate(variables, teachers=(), logit_offset=None) -> counts summed over `split`.

    In-RAM splits are uploaded once and evaluated in one jitted call (`resident`); record
    splits are read batch by batch on the host (`batch_evaluator`).
    """
    if resident and isinstance(split, data.ArraySplit):
        layout = device_data.eval_layout(split, batch_size, mesh)
        step = functools.partial(eval_step, model=model, mean=mean, std=std)
        p_eval = jax.jit(
            functools.partial(_scan_resident, step),
            out_shardings=sharding.replicated(mesh),
            compiler_options=compiler_options,
        )
        return lambda variables, teachers=(), logit_offset=None: jax.device_get(
            p_eval(variables, teachers, layout, logit_offset)
        )
    on_batches = batch_evaluator(model, mesh, mean=mean, std=std, compiler_options=compiler_options)
    return lambda variables, teachers=(), logit_offset=None: on_batches(
        variables, split_batches(split, batch_size), teachers, logit_offset
    )


def _feature_sums(variables, batch, *, model, mean, std, num_classes: int) -> dict:
    images = data.normalize(batch["image"], mean, std)
    _, features = model.apply(variables, images, train=False)
    onehot = jax.nn.one_hot(batch["label"], num_classes) * batch["mask"][:, None]
    return {"sum": onehot.T @ features.astype(jnp.float32), "count": onehot.sum(0)}


def class_feature_means(
    teacher: networks.Teacher, split: data.Split, mesh, batch_size: int, mean, std
) -> np.ndarray:
    """Per-class mean teacher feature on un-augmented training images (KRDistill-R,
    ltkd_jax/methods/krdistill.py), summed like the evaluation counts."""
    step = jax.jit(
        functools.partial(
            _feature_sums, model=teacher.model, mean=mean, std=std, num_classes=split.num_classes
        )
    )
    totals = sum_over_batches(step, (teacher.variables,), split_batches(split, batch_size), mesh)
    return totals["sum"] / np.maximum(totals["count"], 1)[:, None]
