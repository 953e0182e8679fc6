"""CIFAR ResNets and Wide ResNets (backbones) in Flax Linen, NHWC.

- :class:`CifarResNet`: He et al. 2016's ResNet-(6n+2) for CIFAR, post-activation basic
  blocks; ``shortcut='A'`` with 16/32/64 channels is the LDAM-DRW / BKD model
  (``models/resnet_cifar.py``: resnet8/20/32/56/110), ``shortcut='B'`` with a 32-wide stem
  and 64/128/256 channels is CRD / mdistiller's ``resnet8x4`` / ``resnet32x4``
  (``resnet.py``, ``ResNet(depth, [32, 64, 128, 256])``).
- :class:`WideResNet`: Zagoruyko & Komodakis' WRN as in CRD / mdistiller ``wrn.py``
  (wrn_16_2, wrn_40_2): pre-activation blocks, dropout 0.

A backbone maps normalised float images [B, H, W, C_in] (any H, W, C_in) to the globally
pooled features [B, feature_dim]; `models.Network` adds the classifier. Layers and init rules
are in `layers`.

Variable names are those of the checkpoints written so far (``BasicBlockA_i`` /
``BasicBlockB_i``, ``WideBasicBlock_i``, ``Conv_0``, ``BatchNorm_0``); keep them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ltkd_jax.models.layers import (
    BasicBlock,
    Dtype,
    batch_norm,
    conv,
    global_avg_pool,
)


def _blocks_per_stage(depth: int, extra: int, what: str) -> int:
    if depth < 6 + extra or (depth - extra) % 6:
        raise ValueError(f"{what} depth must be 6n+{extra} with n >= 1, got {depth}")
    return (depth - extra) // 6


class CifarResNet(nn.Module):
    """ResNet-(6n+2): conv3x3(stem) -> BN -> ReLU -> 3 stages of n basic blocks (``widths``,
    strides 1/2/2) -> global average pool.

    ResNet-32 with option A: 0.46M parameters with a 10-class linear head.
    """

    supports_cpu_ops: ClassVar[bool] = True
    foldable: ClassVar[bool] = True  # post-activation: every BN follows a conv

    depth: int
    widths: Sequence[int] = (16, 32, 64)
    stem: int | None = None  # None: widths[0]
    shortcut: str = "A"  # layers.SHORTCUTS
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32
    ops: str = "xla"  # cpu_ops.OPS
    weight_init: str = "ldam"  # layers.WEIGHT_INITS

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        n = _blocks_per_stage(self.depth, 2, "CIFAR ResNet")
        stem = self.widths[0] if self.stem is None else self.stem
        x = conv(stem, 3, 1, self.dtype, ops=self.ops, weight_init=self.weight_init)(
            x.astype(self.dtype)
        )
        x = nn.relu(batch_norm(train, self.dtype, ops=self.ops)(x))
        index = 0
        for stage, planes in enumerate(self.widths):
            for i in range(n):
                x = BasicBlock(
                    planes,
                    2 if stage > 0 and i == 0 else 1,
                    self.shortcut,
                    self.zero_init_residual,
                    self.dtype,
                    self.ops,
                    self.weight_init,
                    # The names the former BasicBlockA / BasicBlockB classes were given.
                    name=f"BasicBlock{self.shortcut}_{index}",
                )(x, train)
                index += 1
        return global_avg_pool(x)


class WideBasicBlock(nn.Module):
    """Pre-activation WRN block (CRD / mdistiller ``wrn.py`` ``BasicBlock``, dropout 0).

    When the shape changes, the pre-activated input feeds both the residual branch and the 1x1
    shortcut conv; otherwise the shortcut is the raw input.
    """

    planes: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    ops: str = "xla"
    weight_init: str = "ldam"  # layers.WEIGHT_INITS

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        identity = x.shape[-1] == self.planes and self.stride == 1
        init = self.weight_init
        pre = nn.relu(batch_norm(train, self.dtype, ops=self.ops)(x))
        out = conv(self.planes, 3, self.stride, self.dtype, ops=self.ops, weight_init=init)(pre)
        out = nn.relu(batch_norm(train, self.dtype, ops=self.ops)(out))
        out = conv(self.planes, 3, 1, self.dtype, ops=self.ops, weight_init=init)(out)
        if identity:
            return out + x
        shortcut = conv(
            self.planes, 1, self.stride, self.dtype, "shortcut_conv", self.ops, weight_init=init
        )
        return out + shortcut(pre)


class WideResNet(nn.Module):
    """WRN-depth-k: conv3x3(16) -> 3 stages of n = (depth-4)/6 pre-activation blocks
    (16k/32k/64k channels, strides 1/2/2) -> BN -> ReLU -> global average pool."""

    supports_cpu_ops: ClassVar[bool] = True
    foldable: ClassVar[bool] = False  # pre-activation: a BN precedes each conv

    depth: int
    widen_factor: int
    zero_init_residual: bool = False  # not applicable: accepted only as False
    dtype: Dtype = jnp.float32
    ops: str = "xla"  # cpu_ops.OPS
    weight_init: str = "ldam"  # layers.WEIGHT_INITS

    @property
    def feature_dim(self) -> int:
        return 64 * self.widen_factor

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.ops == "folded":
            raise ValueError("pre-activation BatchNorm cannot be folded into a conv")
        if self.zero_init_residual:
            raise ValueError(
                "zero_init_residual needs blocks that end in a BatchNorm; the pre-activation "
                "WRN blocks end in a conv: set model.zero_init_residual=False"
            )
        n = _blocks_per_stage(self.depth, 4, "WRN")
        k = self.widen_factor
        init = self.weight_init
        x = conv(16, 3, 1, self.dtype, ops=self.ops, weight_init=init)(x.astype(self.dtype))
        for stage, planes in enumerate((16 * k, 32 * k, 64 * k)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                x = WideBasicBlock(planes, stride, self.dtype, self.ops, init)(x, train)
        x = nn.relu(batch_norm(train, self.dtype, ops=self.ops)(x))
        return global_avg_pool(x)


# Builders (registered in `models.MODELS`): keyword arguments are the backbone's fields.
def resnet8(**kwargs) -> CifarResNet:
    return CifarResNet(8, **kwargs)


def resnet20(**kwargs) -> CifarResNet:
    return CifarResNet(20, **kwargs)


def resnet32(**kwargs) -> CifarResNet:
    return CifarResNet(32, **kwargs)


def resnet56(**kwargs) -> CifarResNet:
    return CifarResNet(56, **kwargs)


def resnet110(**kwargs) -> CifarResNet:
    return CifarResNet(110, **kwargs)


X4 = {"widths": (64, 128, 256), "stem": 32, "shortcut": "B"}  # mdistiller [32, 64, 128, 256]


def resnet8x4(**kwargs) -> CifarResNet:
    return CifarResNet(8, **X4, **kwargs)


def resnet32x4(**kwargs) -> CifarResNet:
    return CifarResNet(32, **X4, **kwargs)


def wrn16_2(**kwargs) -> WideResNet:
    return WideResNet(16, 2, **kwargs)


def wrn40_2(**kwargs) -> WideResNet:
    return WideResNet(40, 2, **kwargs)
