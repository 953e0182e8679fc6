"""Model registry: ``get_model(name, num_classes, ...) -> Network``.

A registered model is a backbone (pooled features) wrapped in a `Network` that adds the
classifier head at ``params['classifier']`` (``kernel`` [D, C], plus ``bias`` for the linear
head). It is called as ``model.apply(variables, x, train=...)`` on normalised NHWC float
images and returns ``(logits [B, C], features [B, D])``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ltkd_jax.models import cpu_ops, resnet, resnet_cifar
from ltkd_jax.models.heads import HEADS
from ltkd_jax.models.layers import WEIGHT_INITS
from ltkd_jax.models.network import (
    Network,
    legacy_variables,
    migrate_variables,
    needs_migration,
)

# name -> builder(**backbone fields) -> backbone. A backbone has a `feature_dim` property and
# the class attributes `supports_cpu_ops` (it takes an `ops` field) and `foldable`.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet8": resnet_cifar.resnet8,
    "resnet20": resnet_cifar.resnet20,
    "resnet32": resnet_cifar.resnet32,
    "resnet56": resnet_cifar.resnet56,
    "resnet110": resnet_cifar.resnet110,
    "resnet8x4": resnet_cifar.resnet8x4,
    "resnet32x4": resnet_cifar.resnet32x4,
    "wrn16_2": resnet_cifar.wrn16_2,
    "wrn40_2": resnet_cifar.wrn40_2,
    # ImageNet-style (224 x 224 inputs)
    "resnet10": resnet.resnet10,
    "resnet50": resnet.resnet50,
    "resnext50_32x4d": resnet.resnext50_32x4d,
}

# Compute dtypes by config name (config.model.dtype); parameters stay float32.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _backbone(name: str, **fields: Any) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](**fields)


def get_model(
    name: str,
    num_classes: int,
    *,
    head: str = "linear",
    dtype: Any = jnp.float32,
    ops: str = "xla",
    zero_init_residual: bool = False,
    weight_init: str = "ldam",
    neck: nn.Module | None = None,
    side: nn.Module | None = None,
) -> Network:
    """Build a registered model.

    Args:
      name: one of :data:`MODELS`.
      num_classes: width of the classifier.
      head: ``linear`` (default), ``normed`` (LDAM, cosines) or ``cosine`` (CBD, 20 * cos).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
      ops: ``xla`` (Flax layers) or ``cpu`` (`cpu_ops` kernels, same parameters); backbones
        without CPU kernels (the ImageNet-style ones) always use ``xla``.
      zero_init_residual: the last BatchNorm of every residual block starts with gamma 0 (the
        official CBD code's ``gamma_initializer='zeros'``); post-activation ResNets only.
      weight_init: the conv and linear-head kernel init, ``ldam`` (the LDAM-DRW / BKD
        ResNets') or ``mdistiller`` (mdistiller's CIFAR ResNets'): `layers.WEIGHT_INITS`.
      neck: a method's module between pooling and the head (e.g. CBD's Dense + ReLU
        projection); its output is what the head sees and the returned features.
      side: a method's module on the returned features only (e.g. KRDistill's regressor onto
        the teacher's width); the head does not see it.
      ``neck`` and ``side`` need an int ``features`` attribute (their width), as nn.Dense has.
    """
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")
    if ops not in cpu_ops.OPS:
        raise ValueError(f"unknown ops {ops!r}; choose one of: {', '.join(cpu_ops.OPS)}")
    backbone = _backbone(
        name, dtype=dtype, zero_init_residual=zero_init_residual, weight_init=weight_init
    )
    network = Network(
        backbone,
        num_classes,
        head=head,
        dtype=dtype,
        neck=neck,
        side=side,
        weight_init=weight_init,
    )
    return network.with_ops(ops)


def feature_dim(name: str) -> int:
    """Pooled width of the backbone `name` (the features before any neck or side module)."""
    return _backbone(name).feature_dim


def fold_for_inference(model: Network, variables: dict) -> tuple[Network, dict]:
    """A frozen model and its variables with BatchNorm folded into the convs, when its
    backbone allows (post-activation CIFAR ResNets); otherwise both unchanged."""
    if not model.foldable:
        return model, variables
    return model.with_ops("folded"), cpu_ops.fold_batchnorm(variables)


def num_params(params: Any) -> int:
    """Total number of scalars in a pytree (works on arrays and ``jax.ShapeDtypeStruct``)."""
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))


__all__ = [
    "HEADS",
    "MODELS",
    "WEIGHT_INITS",
    "Network",
    "feature_dim",
    "fold_for_inference",
    "get_model",
    "legacy_variables",
    "migrate_variables",
    "needs_migration",
    "num_params",
]
