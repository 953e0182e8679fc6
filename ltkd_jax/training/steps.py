"""The pure, jitted training steps.

The train step is a pure function of (student state, teacher variables, batch, per-epoch
context). It is compiled once with `jax.jit` over a 1-D data mesh: the batch is sharded,
the state replicated and donated, the teacher passed as an explicit constant argument
(never closed over, never donated, applied in inference mode behind stop_gradient).
`train_chunk` runs K of them in one `lax.scan` over a device-resident split;
`train_planned_step` is its loop-free form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ltkd_jax import data, methods
from ltkd_jax.data import device as device_data
from ltkd_jax.methods import ModelOutput
from ltkd_jax.training import networks


def apply_teachers(teachers: tuple[networks.Teacher, ...], images: jnp.ndarray) -> tuple:
    """Frozen teachers in inference mode (BatchNorm running statistics), no gradient."""
    outputs = []
    for teacher in teachers:
        logits, features = teacher.model.apply(teacher.variables, images, train=False)
        outputs.append(ModelOutput(logits.astype(jnp.float32), features.astype(jnp.float32)))
    return jax.lax.stop_gradient(tuple(outputs))


def train_step(
    state: networks.TrainState,
    teachers: tuple[networks.Teacher, ...],
    batch: dict,
    ctx: dict,
    *,
    method: methods.Method,
    schedule: Callable,
    mean: tuple,
    std: tuple,
) -> tuple[networks.TrainState, dict]:
    """One SGD step on the student; the teachers only feed the loss."""
    images = data.normalize(batch["image"], mean, std)
    labels = batch["label"]
    teacher_outputs = apply_teachers(teachers, images)
    # A frozen backbone (cRT) keeps its BatchNorm statistics: inference mode.
    train_mode = not method.needs.frozen_backbone

    def loss_fn(params):
        (logits, features), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=train_mode,
            mutable=["batch_stats"],
        )
        student = ModelOutput(logits.astype(jnp.float32), features.astype(jnp.float32))
        loss, parts = method.loss(student, labels, teacher_outputs, ctx)
        return loss, (parts, updates["batch_stats"], student.logits)

    (loss, (parts, batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    step_metrics = {
        "loss": loss,
        "train_top1": jnp.mean(jnp.argmax(logits, -1) == labels),
        "lr": schedule(state.step),
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(state.params),
        **{f"loss_{k}": v for k, v in parts.items()},
    }
    return new_state, step_metrics


def _planned_batch(resident: dict, step_plan: dict, batch_sharding) -> dict:
    """One global batch gathered and augmented on the device from the resident split."""
    batch = device_data.make_batch(resident, step_plan)
    return jax.lax.with_sharding_constraint(batch, batch_sharding)


def train_chunk(
    state: Any,
    teachers: tuple[networks.Teacher, ...],
    resident: dict,
    plan: dict,
    ctx: dict,
    *,
    step: Callable,
    batch_sharding,
) -> tuple[Any, dict]:
    """`step(state, teachers, batch, ctx)` over the K global batches of a plan, in one
    `lax.scan` on the device.

    `resident` is the device-resident split, `plan` the [K, B] indices and crops
    (`data.device.plan_batches`). Returns the final state and the stacked [K] metrics.
    """

    def body(state, step_plan):
        return step(state, teachers, _planned_batch(resident, step_plan, batch_sharding), ctx)

    return jax.lax.scan(body, state, plan)


def train_planned_step(
    state: Any,
    teachers: tuple[networks.Teacher, ...],
    resident: dict,
    plan: dict,
    index: jnp.ndarray,
    ctx: dict,
    *,
    step: Callable,
    batch_sharding,
) -> tuple[Any, dict]:
    """`step` on global batch `index` of a plan, built on the device: the loop-free form of
    `train_chunk`, for backends where a scanned step is slow (XLA:CPU)."""
    step_plan = jax.tree.map(lambda x: x[index], plan)
    return step(state, teachers, _planned_batch(resident, step_plan, batch_sharding), ctx)
