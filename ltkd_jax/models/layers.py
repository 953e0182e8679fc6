"""Layers shared by the CIFAR and ImageNet-style ResNets (NHWC, Flax Linen).

Init rules (``weight_init``, config.model.weight_init), for every model; BatchNorm scale 1 /
bias 0 in both:

- ``ldam`` (the default): the LDAM-DRW / BKD ``models/resnet_cifar.py`` (``_weights_init``):
  Kaiming-normal fan_in on conv and linear weights, PyTorch's default uniform linear bias;
- ``mdistiller``: mdistiller's ``mdistiller/models/cifar/resnet.py``: Kaiming-normal fan_out
  (``mode="fan_out", nonlinearity="relu"``) on convs, PyTorch's default ``nn.Linear`` init
  (weight and bias uniform in +-1/sqrt(fan_in)).

Parameters are always float32; ``dtype`` is the computation dtype.

``ops`` picks the implementation of conv and BatchNorm (`cpu_ops.OPS`): Flax's own layers
(``xla``), the CPU kernels of `cpu_ops` with the same parameters (``cpu``), or, for
inference, convs that carry their folded BatchNorm as a bias (``folded``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ltkd_jax.models import cpu_ops

Dtype = Any
Initializer = Callable[..., jax.Array]

# Kaiming-normal, fan_in, gain sqrt(2), not truncated: PyTorch's `kaiming_normal_` as the
# LDAM-DRW / BKD ``models/resnet_cifar.py`` apply it to every conv and linear weight.
kaiming_normal: Initializer = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: std sqrt(2 / (k * k * out)), as
# mdistiller's models/cifar/resnet.py applies it to every conv.
kaiming_normal_fan_out: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default `nn.Linear` weight: kaiming_uniform_(a=sqrt(5)), i.e. uniform with bound
# gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + 5)): bound 1 / sqrt(fan_in) = sqrt(3 * (1/3) /
# fan_in), flax's variance_scaling(1/3, fan_in, uniform).
torch_linear_kernel: Initializer = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# config.model.weight_init -> (conv kernel, linear kernel) initialisers (module docstring).
WEIGHT_INITS: dict[str, tuple[Initializer, Initializer]] = {
    "ldam": (kaiming_normal, kaiming_normal),
    "mdistiller": (kaiming_normal_fan_out, torch_linear_kernel),
}


def _inits(weight_init: str) -> tuple[Initializer, Initializer]:
    if weight_init not in WEIGHT_INITS:
        raise ValueError(f"weight_init={weight_init!r}; choose one of {list(WEIGHT_INITS)}")
    return WEIGHT_INITS[weight_init]


SHORTCUTS = ("A", "B")  # He et al. 2016, Sec. 3.3: A = zero-pad identity, B = 1x1 conv


def torch_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default ``nn.Linear`` bias init: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def linear(
    features: int,
    in_features: int,
    *,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
    weight_init: str = "ldam",
) -> nn.Dense:
    """Dense with the linear init of `weight_init` (module docstring) and PyTorch's bias."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_inits(weight_init)[1],
        bias_init=torch_bias_init(in_features),
        name=name,
    )


def conv(
    features: int,
    kernel: int,
    stride: int,
    dtype: Dtype,
    name: str | None = None,
    ops: str = "xla",
    *,
    groups: int = 1,
    weight_init: str = "ldam",
) -> nn.Conv:
    """A bias-free conv (kernel init: `weight_init`, module docstring); with
    ``ops='folded'`` it carries its folded BatchNorm as a bias."""
    # Explicit symmetric padding = PyTorch `padding=k//2`. Flax "SAME" pads (0, 1) for stride 2
    # on even inputs, which shifts the sampling grid relative to the reference models.
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=ops == "folded",
        kernel_init=_inits(weight_init)[0],
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
        conv_general_dilated_cls=cpu_ops.DwGemmConv if ops == "cpu" else None,
    )


def batch_norm(
    train: bool, dtype: Dtype, name: str | None = None, ops: str = "xla", zero_scale: bool = False
) -> Callable[[jax.Array], jax.Array]:
    """BatchNorm (`cpu_ops.BatchNorm` for ``ops='cpu'``; the identity once folded)."""
    if ops == "folded":
        if train:
            raise ValueError("a model with BatchNorm folded into its convs is inference-only")
        return lambda x: x
    # Flax momentum 0.9 == PyTorch momentum 0.1 (and Keras' 0.9, the official CBD code); Flax's
    # default 0.99 would make the running statistics lag. No axis_name: under jit with a
    # sharded batch the statistics are already global, and axis_name fails outside pmap.
    norm = cpu_ops.BatchNorm if ops == "cpu" else nn.BatchNorm
    return norm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
        **({"scale_init": nn.initializers.zeros} if zero_scale else {}),
    )


def global_avg_pool(x: jax.Array) -> jax.Array:
    """[B, H, W, C] -> [B, C]."""
    return jnp.mean(x, axis=(1, 2))


def option_a_shortcut(x: jax.Array, planes: int) -> jax.Array:
    """He et al. option A: subsample by 2 and zero-pad ``planes // 4`` channels on each side.

    Parameter-free, which is why the LDAM-DRW ResNet-32 has 0.46M parameters; it assumes the
    block doubles the channels (16 -> 32 -> 64).
    """
    if planes != 2 * x.shape[-1]:
        raise ValueError(
            f"option-A shortcut maps {x.shape[-1]} to {planes} channels; it only doubles them "
            "(use shortcut='B')"
        )
    x = x[:, ::2, ::2, :]
    pad = planes // 4
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad, pad)))


def conv_shortcut(
    x: jax.Array,
    planes: int,
    stride: int,
    train: bool,
    dtype: Dtype,
    ops: str = "xla",
    weight_init: str = "ldam",
) -> jax.Array:
    """Option B: 1x1 conv + BN, named ``shortcut_conv`` / ``shortcut_bn`` in the caller."""
    x = conv(planes, 1, stride, dtype, name="shortcut_conv", ops=ops, weight_init=weight_init)(x)
    return batch_norm(train, dtype, name="shortcut_bn", ops=ops)(x)


class BasicBlock(nn.Module):
    """Post-activation basic block: 3x3 -> BN -> ReLU -> 3x3 -> BN, + shortcut, ReLU.

    The block of LDAM-DRW ``models/resnet_cifar.py`` (``shortcut='A'``), of mdistiller's
    ``resnet.py`` (``'B'``, the x4 models) and of torchvision's ``resnet.py`` (``'B'``). The
    shortcut is the identity unless the stride or the width changes.
    ``zero_init_residual``: the last BN starts with gamma 0, so the block starts as the
    identity (Goyal et al. 2017; the official CBD code's ``gamma_initializer='zeros'``).
    """

    planes: int
    stride: int = 1
    shortcut: str = "B"
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32
    ops: str = "xla"
    weight_init: str = "ldam"  # WEIGHT_INITS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut={self.shortcut!r}; choose one of {list(SHORTCUTS)}")
        init = self.weight_init
        out = conv(self.planes, 3, self.stride, self.dtype, ops=self.ops, weight_init=init)(x)
        out = nn.relu(batch_norm(train, self.dtype, ops=self.ops)(out))
        out = conv(self.planes, 3, 1, self.dtype, ops=self.ops, weight_init=init)(out)
        out = batch_norm(train, self.dtype, ops=self.ops, zero_scale=self.zero_init_residual)(out)
        if self.stride != 1 or x.shape[-1] != self.planes:
            if self.shortcut == "A":
                x = option_a_shortcut(x, self.planes)
            else:
                x = conv_shortcut(x, self.planes, self.stride, train, self.dtype, self.ops, init)
        return nn.relu(out + x)
