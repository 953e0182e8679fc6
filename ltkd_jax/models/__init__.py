"""Model registry: ``get_model(name, num_classes, ...)`` (methods.md 5.2, 7.2, 8.2).

Every model is a Linen module called as ``model.apply(variables, x, train=...)`` on
normalised NHWC float images; it returns ``(logits [B, C], features [B, D])`` and keeps its
head at ``params['classifier']`` (``kernel`` [D, C], plus ``bias`` for the linear head).
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
    # ImageNet-style (224 x 224 inputs; methods.md 4.6, 5.3, 8.1)
    "resnet10": resnet.resnet10,
    "resnet50": resnet.resnet50,
    "resnext50_32x4d": resnet.resnext50_32x4d,
}

# Compute dtypes by config name (config.model.dtype); parameters stay float32.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Models built from resnet_cifar's layers, which take `ops` (cpu_ops.OPS).
CPU_OPS_MODELS = tuple(
    name for name, fn in MODELS.items() if fn.func.__module__ == resnet_cifar.__name__
)


def get_model(
    name: str,
    num_classes: int,
    *,
    head: str = "linear",
    dtype: Any = jnp.float32,
    projection_dim: int | None = None,
    regressor_dim: int | None = None,
    ops: str = "xla",
    zero_init_residual: bool = False,
) -> nn.Module:
    """Build a registered model.

    Args:
      name: one of :data:`MODELS`.
      num_classes: width of the classifier.
      head: ``linear`` (default), ``normed`` (LDAM, cosines) or ``cosine`` (CBD, 20 * cos).
      dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32.
      projection_dim: if set, a CBD ``Dense(projection_dim) + ReLU`` after pooling; the
        returned features are then the projected vector (methods.md 8.2).
      regressor_dim: if set, the returned features pass through a linear map to this width
        (KRDistill's regressor onto the teacher's features, methods.md 7.2).
      ops: ``xla`` (Flax layers) or ``cpu`` (`cpu_ops` kernels, same parameters); the
        ImageNet-style models always use ``xla``.
      zero_init_residual: ImageNet-style models only: the last BatchNorm of every residual
        block starts with gamma 0 (the official CBD code's ``gamma_initializer='zeros'``).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")
    return MODELS[name](
        num_classes=num_classes,
        head=head,
        dtype=dtype,
        projection_dim=projection_dim,
        regressor_dim=regressor_dim,
        **({"ops": ops} if name in CPU_OPS_MODELS else {"zero_init_residual": zero_init_residual}),
    )


def fold_for_inference(model: nn.Module, variables: dict) -> tuple[nn.Module, dict]:
    """A frozen model and its variables with BatchNorm folded into the convs, when its
    architecture allows (post-activation CIFAR ResNets); otherwise both unchanged."""
    if not getattr(model, "foldable", False):
        return model, variables
    return model.clone(ops="folded"), cpu_ops.fold_batchnorm(variables)


def feature_dim(name: str, projection_dim: int | None = None) -> int:
    """Width D of the features a model returns (its pooled width, or ``projection_dim``)."""
    return get_model(name, 1, projection_dim=projection_dim).feature_dim


def num_params(params: Any) -> int:
    """Total number of scalars in a pytree (works on arrays and ``jax.ShapeDtypeStruct``)."""
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(params))


__all__ = ["MODELS", "HEADS", "get_model", "fold_for_inference", "feature_dim", "num_params"]
