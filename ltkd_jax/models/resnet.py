"""ImageNet-style ResNet v1 and ResNeXt in Flax Linen, NHWC (methods.md 4.6, 5.3, 8.1).

Standard v1 layout: 7x7/2 conv stem + BN + ReLU + 3x3/2 max-pool, four stages (64, 128, 256,
512 planes; strides 1, 2, 2, 2), global average pool, head. Bottleneck blocks (1x1, 3x3, 1x1
x4) put the stride on the 3x3 conv (torchvision / Haiku `BlockV1`); projection shortcuts
(1x1 conv + BN) wherever the shape changes. BatchNorm momentum 0.9, eps 1e-5 (methods.md 8.1).
ResNeXt replaces the 3x3 conv by a grouped conv of `groups` x `width_per_group` channels.

Parameter counts at 1000 classes, linear head (torchvision's numbers): ResNet-50 25,557,032;
ResNeXt-50 32x4d 25,028,904; ResNet-10 (BasicBlock [1, 1, 1, 1]) 5,418,792.

Same interface as the CIFAR models: `(logits [B, C], features [B, D])`, head at
`params['classifier']`, float32 parameters with `dtype` as the compute dtype (e.g. bfloat16),
optional CBD projection and KRDistill regressor.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ltkd_jax.models.resnet_cifar import _bn, _conv, _pool_and_classify

Dtype = Any


def _last_bn(train: bool, dtype: Dtype, zero_init: bool) -> nn.BatchNorm:
    """The block's last BN; zero gamma makes every residual block start as the identity
    (Goyal et al.; the official CBD code; off by default as in torchvision)."""
    return _bn(train, dtype, zero_scale=zero_init)


def _shortcut(x: jax.Array, out: int, stride: int, train: bool, dtype: Dtype) -> jax.Array:
    if stride == 1 and x.shape[-1] == out:
        return x
    x = _conv(out, 1, stride, dtype, name="shortcut_conv")(x)
    return _bn(train, dtype, name="shortcut_bn")(x)


class BasicBlock(nn.Module):
    """3x3 -> BN -> ReLU -> 3x3 -> BN, + shortcut, ReLU (expansion 1)."""

    planes: int
    stride: int = 1
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32

    expansion = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out = _conv(self.planes, 3, self.stride, self.dtype)(x)
        out = nn.relu(_bn(train, self.dtype)(out))
        out = _conv(self.planes, 3, 1, self.dtype)(out)
        out = _last_bn(train, self.dtype, self.zero_init_residual)(out)
        return nn.relu(out + _shortcut(x, self.planes, self.stride, train, self.dtype))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, groups) -> 1x1 (x4), BN after each, + shortcut, ReLU."""

    planes: int
    stride: int = 1
    groups: int = 1
    width_per_group: int = 64
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32

    expansion = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        width = int(self.planes * (self.width_per_group / 64.0)) * self.groups
        out_planes = self.planes * self.expansion
        out = _conv(width, 1, 1, self.dtype)(x)
        out = nn.relu(_bn(train, self.dtype)(out))
        out = _conv(width, 3, self.stride, self.dtype, groups=self.groups)(out)
        out = nn.relu(_bn(train, self.dtype)(out))
        out = _conv(out_planes, 1, 1, self.dtype)(out)
        out = _last_bn(train, self.dtype, self.zero_init_residual)(out)
        return nn.relu(out + _shortcut(x, out_planes, self.stride, train, self.dtype))


class ResNet(nn.Module):
    """ResNet v1 / ResNeXt for ImageNet-sized inputs (any H, W >= 32)."""

    stage_sizes: Sequence[int]
    block: str  # "basic" | "bottleneck"
    num_classes: int
    groups: int = 1
    width_per_group: int = 64
    zero_init_residual: bool = False
    head: str = "linear"
    projection_dim: int | None = None
    regressor_dim: int | None = None
    dtype: Dtype = jnp.float32

    @property
    def feature_dim(self) -> int:
        expansion = 4 if self.block == "bottleneck" else 1
        return self.regressor_dim or self.projection_dim or 512 * expansion

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        x = _conv(64, 7, 2, self.dtype, name="stem_conv")(x.astype(self.dtype))
        x = nn.relu(_bn(train, self.dtype, name="stem_bn")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage, (planes, n) in enumerate(
            zip((64, 128, 256, 512), self.stage_sizes, strict=True)
        ):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                if self.block == "bottleneck":
                    block = Bottleneck(
                        planes,
                        stride,
                        self.groups,
                        self.width_per_group,
                        self.zero_init_residual,
                        self.dtype,
                    )
                else:
                    block = BasicBlock(planes, stride, self.zero_init_residual, self.dtype)
                x = block(x, train)
        return _pool_and_classify(
            x,
            num_classes=self.num_classes,
            head=self.head,
            projection_dim=self.projection_dim,
            dtype=self.dtype,
            regressor_dim=self.regressor_dim,
        )


resnet10 = functools.partial(ResNet, (1, 1, 1, 1), "basic")
resnet18 = functools.partial(ResNet, (2, 2, 2, 2), "basic")
resnet50 = functools.partial(ResNet, (3, 4, 6, 3), "bottleneck")
resnext50_32x4d = functools.partial(
    ResNet, (3, 4, 6, 3), "bottleneck", groups=32, width_per_group=4
)
