"""The pure, jitted training steps.

The train step is a pure function of (student state, teacher variables, batch, per-epoch
context). It is compiled once with `jax.jit` over a 1-D data mesh: the batch is sharded,
the state replicated and donated, the teacher passed as an explicit constant argument
(never closed over, never donated, applied in inference mode behind stop_gradient).
`train_chunk` runs K of them in one `lax.scan` over a device-resident split;
`train_planned_step` is its loop-free form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

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


def student_update(
    state: networks.TrainState,
    teacher_outputs: tuple,
    images: jnp.ndarray,
    labels: jnp.ndarray,
    ctx: dict,
    *,
    method: methods.Method,
    schedule: Callable,
) -> tuple[networks.TrainState, dict]:
    """One SGD step of a student on normalised `images`, given the frozen teachers' outputs
    on them (`apply_teachers`)."""
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
    teacher_outputs = apply_teachers(teachers, images)
    return student_update(
        state, teacher_outputs, images, batch["label"], ctx, method=method, schedule=schedule
    )


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


# ---------------------------------------------------------------------------------------
# Several students in one step (a cohort; one run is a cohort of one)
# ---------------------------------------------------------------------------------------


class CohortState(struct.PyTreeNode):
    """The students of a cohort: one TrainState per group of members with the same network
    (its leaves stacked on a leading member axis when the group has several members), and
    which members still train."""

    groups: tuple
    alive: jax.Array  # [members] bool; a non-finite loss or gradient freezes a member


@dataclasses.dataclass(frozen=True)
class CohortLayout:
    """The static shape of a cohort: member indices of each group, which batch each member
    reads (None: one batch for all), and whether groups run under `jax.vmap`."""

    groups: tuple[tuple[int, ...], ...]
    batch_of: tuple[int, ...] | None = None
    vmapped: bool = False

    @property
    def num_members(self) -> int:
        return sum(len(g) for g in self.groups)

    def member(self, state: CohortState, k: int):
        """Member k's own TrainState."""
        for members, group in zip(self.groups, state.groups, strict=True):
            if k in members:
                return group if len(members) == 1 else member_of(group, members.index(k))
        raise IndexError(k)


def member_of(tree, j: int):
    """Member j of a tree stacked on a leading member axis."""
    return jax.tree.map(lambda x: x[j], tree)


def stack_members(trees: list):
    """Trees of the same structure stacked on a new leading member axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _unrolled_group(stacked, inputs: list, ctxs: list, methods_: list, schedule) -> tuple:
    """Each member's own `student_update`, one after another in the same program."""
    updated = [
        student_update(
            member_of(stacked, j), outs, images, labels, ctx, method=m, schedule=schedule
        )
        for j, ((images, labels, outs), ctx, m) in enumerate(
            zip(inputs, ctxs, methods_, strict=True)
        )
    ]
    return stack_members([u[0] for u in updated]), [u[1] for u in updated]


def _vmapped_group(stacked, inputs: list, ctxs: list, methods_: list, schedule, shared: bool):
    """One batched forward and backward pass of the group's network under `jax.vmap`; each
    member's own loss on its own slice. The members' losses are independent, so the gradient
    of their sum with respect to the stacked parameters is each member's own gradient."""
    images = inputs[0][0] if shared else jnp.stack([x for x, _, _ in inputs])

    def forward(params, batch_stats, x):
        variables = {"params": params, "batch_stats": batch_stats}
        return stacked.apply_fn(variables, x, train=True, mutable=["batch_stats"])

    def loss_fn(params):
        in_axes = (0, 0, None if shared else 0)
        (logits, features), updates = jax.vmap(forward, in_axes=in_axes)(
            params, stacked.batch_stats, images
        )
        losses, parts = [], []
        for j, ((_, labels, outs), ctx, method) in enumerate(
            zip(inputs, ctxs, methods_, strict=True)
        ):
            student = ModelOutput(logits[j].astype(jnp.float32), features[j].astype(jnp.float32))
            loss, part = method.loss(student, labels, outs, ctx)
            losses.append(loss)
            parts.append(part)
        return sum(losses), (losses, parts, updates["batch_stats"], logits)

    (_, (losses, parts, batch_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        stacked.params
    )
    new = jax.vmap(lambda s, g, b: s.apply_gradients(grads=g, batch_stats=b))(
        stacked, grads, batch_stats
    )
    metrics = [
        {
            "loss": losses[j],
            "train_top1": jnp.mean(jnp.argmax(logits[j], -1) == labels),
            "lr": schedule(stacked.step[j]),
            "grad_norm": optax.tree.norm(member_of(grads, j)),
            "param_norm": optax.tree.norm(member_of(stacked.params, j)),
            **{f"loss_{k}": v for k, v in parts[j].items()},
        }
        for j, (_, labels, _) in enumerate(inputs)
    ]
    return new, metrics


def _finite(step_metrics: dict) -> jax.Array:
    return jnp.isfinite(step_metrics["loss"]) & jnp.isfinite(step_metrics["grad_norm"])


def _where_members(ok: jax.Array, new, old):
    """Per member (the leading axis of `ok`'s shape): the new leaves where `ok`, else the
    old."""
    return jax.tree.map(
        lambda n, o: jnp.where(ok.reshape(ok.shape + (1,) * (n.ndim - ok.ndim)), n, o), new, old
    )


def cohort_step(
    state: CohortState,
    teachers: tuple[networks.Teacher, ...],
    batch: dict,
    ctx: tuple[dict, ...],
    *,
    layout: CohortLayout,
    member_methods: tuple[methods.Method, ...],
    schedule: Callable,
    mean: tuple,
    std: tuple,
) -> tuple[CohortState, tuple[dict, ...]]:
    """One SGD step of every member: the batch is normalised and the teachers applied once
    per batch (one, or one per seed: `layout.batch_of`); then each group updates its members
    (`_vmapped_group` or `_unrolled_group`). A member whose loss or gradient is not finite
    keeps its last state and stops training (`alive`). Returns per-member metrics."""
    images = data.normalize(batch["image"], mean, std)
    labels = batch["label"]
    if layout.batch_of is None:
        outputs = apply_teachers(teachers, images)
        member_inputs = [(images, labels, outputs)] * layout.num_members
    else:  # [D, B, ...]: the teachers see each distinct batch once
        outputs = jax.vmap(apply_teachers, in_axes=(None, 0))(teachers, images)
        member_inputs = [(images[d], labels[d], member_of(outputs, d)) for d in layout.batch_of]
    groups, metrics, alive = [], [None] * layout.num_members, state.alive
    for members, group in zip(layout.groups, state.groups, strict=True):
        inputs = [member_inputs[k] for k in members]
        ctxs, methods_ = [ctx[k] for k in members], [member_methods[k] for k in members]
        if len(members) == 1:  # exactly a single run's step
            (images_k, labels_k, outputs_k), (k,) = inputs[0], members
            new, step_metrics = student_update(
                group, outputs_k, images_k, labels_k, ctxs[0], method=methods_[0], schedule=schedule
            )
            group_metrics = [step_metrics]
        elif layout.vmapped and not any(m.needs.frozen_backbone for m in methods_):
            shared = layout.batch_of is None
            new, group_metrics = _vmapped_group(group, inputs, ctxs, methods_, schedule, shared)
        else:
            new, group_metrics = _unrolled_group(group, inputs, ctxs, methods_, schedule)
        if layout.num_members > 1:  # one run stops on the host instead (trainer._check_finite)
            ok = jnp.stack(
                [alive[k] & _finite(m) for k, m in zip(members, group_metrics, strict=True)]
            )
            new = _where_members(ok if len(members) > 1 else ok[0], new, group)
            alive = alive.at[jnp.asarray(members)].set(ok)
        groups.append(new)
        for k, m in zip(members, group_metrics, strict=True):
            metrics[k] = m
    return CohortState(tuple(groups), alive), tuple(metrics)
