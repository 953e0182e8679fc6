"""The networks a config describes: the student (backbone, head and the method's own parts)
and its training state, frozen teachers, and the helpers every stage shares to build and
restore them."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from flax.training import train_state

from ltkd_jax import methods, models
from ltkd_jax.models import cpu_ops
from ltkd_jax.training import sharding


class TrainState(train_state.TrainState):
    """Flax TrainState plus BatchNorm running statistics."""

    batch_stats: Any = None


def variables_of(state: TrainState) -> dict:
    return {"params": state.params, "batch_stats": state.batch_stats}


def create_train_state(
    model, tx: optax.GradientTransformation, image_shape: tuple, seed: int, mesh
) -> TrainState:
    """Initialises the state directly replicated on the mesh (no host copy)."""
    variables = _initializer(model, tuple(image_shape), mesh)(jax.random.key(seed))

    def create(variables):
        return TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            batch_stats=variables.get("batch_stats", {}),
            tx=tx,
        )

    return jax.jit(create, out_shardings=sharding.replicated(mesh))(variables)


@functools.cache
def _initializer(model, image_shape: tuple, mesh):
    """The compiled `model.init`, one per network structure: a cohort's members, a teacher
    and its student of the same structure compile it once (on a CPU it costs seconds, the
    optimiser state built from it in `create_train_state` almost nothing)."""

    def init(rng):
        return model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)

    return jax.jit(init, out_shardings=sharding.replicated(mesh))


def start_from(state: TrainState, variables: dict, *, fresh_classifier: bool) -> TrainState:
    """`state` with a copy of a finished run's variables (the caller's arrays stay theirs: the
    step donates its state) and a fresh optimiser state; with `fresh_classifier` the
    classifier keeps its new initialisation, to be re-trained (cRT)."""
    variables = jax.tree.map(jnp.copy, variables)
    params = dict(variables["params"])
    if fresh_classifier:
        params["classifier"] = state.params["classifier"]
    return state.replace(
        params=params, batch_stats=variables["batch_stats"], opt_state=state.tx.init(params)
    )


@struct.dataclass
class Teacher:
    """A frozen teacher: its module (static) and its variables (a constant pytree)."""

    variables: dict
    model: Any = struct.field(pytree_node=False)


def cpu_kernels(config: ml_collections.ConfigDict) -> str:
    """config.model.cpu_kernels; 'auto' for runs recorded before the field existed."""
    return config.model.get("cpu_kernels", "auto")


def compiler_options(config: ml_collections.ConfigDict) -> dict | None:
    """XLA compiler options for the run's kernels (`cpu_ops.compiler_options`)."""
    return cpu_ops.compiler_options(cpu_kernels(config))


def build_model(config: ml_collections.ConfigDict, num_classes: int):
    """The network of `config`: its backbone and head, plus the learnable parts its method
    adds (`methods.student_parts`), from the config alone, so a finished run is rebuilt
    exactly as it was trained."""
    m = config.model
    parts = methods.student_parts(config)
    return models.get_model(
        m.name,
        num_classes,
        head=m.head,
        dtype=models.DTYPES[m.dtype],
        neck=parts.neck,
        side=parts.side,
        ops=cpu_ops.model_ops(cpu_kernels(config)),
        # Runs recorded before these fields existed lack them; they only change the initial
        # state.
        zero_init_residual=m.get("zero_init_residual", False),
        weight_init=m.get("weight_init", "ldam"),
    )


def abstract_variables(model, image_shape: tuple, mesh) -> dict:
    """Shapes, dtypes and (replicated) shardings of a model's variables, nothing allocated."""
    shapes = jax.eval_shape(
        functools.partial(model.init, train=False),
        jax.random.key(0),
        jnp.zeros((1, *image_shape), jnp.float32),
    )
    repl = sharding.replicated(mesh)
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), shapes)


def fold_teacher(teacher: Teacher) -> Teacher:
    """The same frozen teacher with BatchNorm folded into its convs, where its architecture
    allows (cpu_ops.fold_batchnorm): equal outputs within float tolerance, fewer passes."""
    model, variables = models.fold_for_inference(teacher.model, teacher.variables)
    return Teacher(variables=variables, model=model)
