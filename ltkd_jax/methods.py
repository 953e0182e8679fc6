"""Training methods as recipes: each names its loss and what that loss needs.

The trainer knows nothing about individual methods. A `Method` gives it
- `loss(student, labels, teacher, ctx) -> (loss, parts)`, called inside the jitted step,
  where `student` / `teacher` are `ModelOutput`s and `ctx` a dict of per-epoch arrays;
- `epoch_context(epoch)`: the arrays that change with the epoch (class weights of a DRW
  switch, a warm-up factor), computed on the host and passed into the step as ordinary
  arguments, so a new epoch never recompiles;
- `needs_teacher`: whether the step must run a frozen teacher.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import ml_collections
import numpy as np

from ltkd_jax import losses


class ModelOutput(NamedTuple):
    logits: jnp.ndarray
    features: jnp.ndarray


LossFn = Callable[[ModelOutput, jnp.ndarray, "ModelOutput | None", dict], tuple]


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    loss: LossFn
    epoch_context: Callable[[int], dict] = lambda epoch: {}
    needs_teacher: bool = False


def _ce(config: ml_collections.ConfigDict, class_counts: np.ndarray) -> Method:
    del config, class_counts

    def loss(student, labels, teacher, ctx):
        del teacher, ctx
        return losses.cross_entropy(student.logits, labels=labels)

    return Method("ce", loss)


# name -> builder(config, class_counts) -> Method
METHODS: dict[str, Callable[[ml_collections.ConfigDict, np.ndarray], Method]] = {
    "ce": _ce,
}


def make_method(config: ml_collections.ConfigDict, class_counts: np.ndarray) -> Method:
    if config.method not in METHODS:
        raise ValueError(
            f"config.method={config.method!r} is not known; choose one of {sorted(METHODS)}"
        )
    return METHODS[config.method](config, np.asarray(class_counts))
