"""Classifier heads, selected by name.

Every head is created by `models.Network` under the submodule name ``classifier`` with a
parameter ``kernel`` of shape [D, C] (plus ``bias`` for ``linear``), so later stages
(tau-norm, cRT) find it at ``params['classifier']``.

- ``linear``: Dense with bias and PyTorch's bias init (the default; the BKD / mdistiller
  heads), its kernel initialised by the model's ``weight_init`` (`layers`).
- ``normed``: LDAM ``NormedLinear`` (LDAM-DRW ``models/resnet_cifar.py``): cosine between the
  L2-normalised feature and the L2-normalised weight columns, no bias. Outputs cosines in
  [-1, 1]; the LDAM loss applies its own scale s = 30 (LDAM-DRW ``losses.py``).
- ``cosine``: the CBD cosine classifier ``sigma * cos`` with a FIXED, non-trainable
  sigma = 20, Glorot-uniform weights (Keras' default, as the official CBD code builds it),
  no bias.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ltkd_jax.models.layers import Dtype, Initializer, kaiming_normal, linear, torch_bias_init

# Avoids 0/0 when normalising an all-zero vector (e.g. a dead ReLU feature); PyTorch's
# F.normalize uses the same 1e-12 floor on the norm.
NORM_EPS = 1e-12

# The CBD cosine classifier's scale (CBD paper and official code): fixed, not learned.
CBD_SIGMA = 20.0


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = NORM_EPS) -> jax.Array:
    """``x / max(||x||, eps)``; finite value *and* gradient at x = 0 (unlike ``x / ||x||``)."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def ldam_kernel_init(
    key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32
) -> jax.Array:
    """LDAM ``NormedLinear`` init: uniform(-1, 1), then every class column renormed to length 1."""
    w = jax.random.uniform(key, shape, dtype, -1.0, 1.0)
    return l2_normalize(w, axis=0)


class CosineClassifier(nn.Module):
    """``scale * normalize(x) @ normalize(W, axis=0)``; no bias (LDAM's NormedLinear, CBD).

    ``scale`` is a static attribute, never a parameter: 1 for LDAM's NormedLinear, 20 for CBD.
    """

    num_classes: int
    scale: float = 1.0
    kernel_init: Initializer = nn.initializers.glorot_uniform()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", self.kernel_init, (x.shape[-1], self.num_classes), jnp.float32
        )
        # Normalise in float32 (the norms are reductions), then run the matmul in `dtype`.
        x = l2_normalize(x.astype(jnp.float32), axis=-1).astype(self.dtype)
        w = l2_normalize(kernel, axis=0).astype(self.dtype)
        return (self.scale * jnp.dot(x, w)).astype(self.dtype)


HEADS = ("linear", "normed", "cosine")


def make_head(
    head: str,
    num_classes: int,
    in_features: int,
    *,
    dtype: Dtype = jnp.float32,
    name: str | None = "classifier",
    weight_init: str = "ldam",
) -> nn.Module:
    """Build the classifier head called ``head`` (one of :data:`HEADS`); ``weight_init``
    (`layers.WEIGHT_INITS`) sets a linear head's kernel init."""
    if head == "linear":
        return linear(num_classes, in_features, dtype=dtype, name=name, weight_init=weight_init)
    if head == "normed":
        return CosineClassifier(
            num_classes, scale=1.0, kernel_init=ldam_kernel_init, dtype=dtype, name=name
        )
    if head == "cosine":
        return CosineClassifier(
            num_classes,
            scale=CBD_SIGMA,
            kernel_init=nn.initializers.glorot_uniform(),
            dtype=dtype,
            name=name,
        )
    raise ValueError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")


__all__ = [
    "CBD_SIGMA",
    "HEADS",
    "CosineClassifier",
    "kaiming_normal",
    "l2_normalize",
    "ldam_kernel_init",
    "linear",
    "make_head",
    "torch_bias_init",
]
