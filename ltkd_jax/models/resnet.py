"""ImageNet-style ResNet v1 and ResNeXt backbones in Flax Linen, NHWC.

Standard v1 layout (He et al. 2016; torchvision ``resnet.py``): 7x7/2 conv stem + BN + ReLU +
3x3/2 max-pool, four stages (64, 128, 256, 512 planes; strides 1, 2, 2, 2), global average
pool. Bottleneck blocks (1x1, 3x3, 1x1 x4) put the stride on the 3x3 conv (torchvision / Haiku
``BlockV1``); projection shortcuts (1x1 conv + BN) wherever the shape changes. ResNeXt (Xie et
al. 2017) replaces the 3x3 conv by a grouped conv of ``groups`` x ``width_per_group`` channels.
BasicBlock and the layers are shared with the CIFAR models (`layers`).

Parameter counts at 1000 classes, linear head (torchvision's numbers): ResNet-50 25,557,032;
ResNeXt-50 32x4d 25,028,904; ResNet-10 (BasicBlock [1, 1, 1, 1]) 5,418,792.

Same interface as the CIFAR backbones: pooled features [B, feature_dim], float32 parameters
with ``dtype`` as the compute dtype (e.g. bfloat16). Always Flax's own layers (``ops='xla'``).
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
    conv_shortcut,
    global_avg_pool,
)


def stem_pool(x: jax.Array) -> jax.Array:
    """torchvision's `MaxPool2d(3, stride=2, padding=1)`: -inf padding, then a VALID pool.
    The same numbers as `nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))`, which
    the `[export]` extra's jax2onnx 0.12 converts without its padding (a 7x7 map for 8x8),
    so ONNX export of these ResNets failed its check."""
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
    return nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="VALID")


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, groups) -> 1x1 (x4), BN after each, + shortcut, ReLU.

    ``zero_init_residual``: the last BN starts with gamma 0 (see `layers.BasicBlock`)."""

    planes: int
    stride: int = 1
    groups: int = 1
    width_per_group: int = 64
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32
    weight_init: str = "ldam"  # layers.WEIGHT_INITS

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        width = int(self.planes * (self.width_per_group / 64.0)) * self.groups
        out_planes = self.planes * self.expansion
        init = self.weight_init
        out = conv(width, 1, 1, self.dtype, weight_init=init)(x)
        out = nn.relu(batch_norm(train, self.dtype)(out))
        out = conv(width, 3, self.stride, self.dtype, groups=self.groups, weight_init=init)(out)
        out = nn.relu(batch_norm(train, self.dtype)(out))
        out = conv(out_planes, 1, 1, self.dtype, weight_init=init)(out)
        out = batch_norm(train, self.dtype, zero_scale=self.zero_init_residual)(out)
        if self.stride != 1 or x.shape[-1] != out_planes:
            x = conv_shortcut(x, out_planes, self.stride, train, self.dtype, weight_init=init)
        return nn.relu(out + x)


class ResNet(nn.Module):
    """ResNet v1 / ResNeXt for ImageNet-sized inputs (any H, W >= 32)."""

    supports_cpu_ops: ClassVar[bool] = False
    foldable: ClassVar[bool] = False  # fold_batchnorm's pairs are the CIFAR blocks' names

    stage_sizes: Sequence[int]
    block: str  # "basic" | "bottleneck"
    groups: int = 1
    width_per_group: int = 64
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32
    weight_init: str = "ldam"  # layers.WEIGHT_INITS

    @property
    def feature_dim(self) -> int:
        return 512 * (Bottleneck.expansion if self.block == "bottleneck" else 1)

    def _block(self, planes: int, stride: int, index: int) -> nn.Module:
        # Named as Flax auto-named them before the refactor: BasicBlock_i / Bottleneck_i.
        if self.block == "bottleneck":
            return Bottleneck(
                planes,
                stride,
                self.groups,
                self.width_per_group,
                self.zero_init_residual,
                self.dtype,
                self.weight_init,
                name=f"Bottleneck_{index}",
            )
        if self.block == "basic":
            return BasicBlock(
                planes,
                stride,
                "B",
                self.zero_init_residual,
                self.dtype,
                weight_init=self.weight_init,
                name=f"BasicBlock_{index}",
            )
        raise ValueError(f"block={self.block!r}; choose 'basic' or 'bottleneck'")

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        stem = conv(64, 7, 2, self.dtype, name="stem_conv", weight_init=self.weight_init)
        x = stem(x.astype(self.dtype))
        x = nn.relu(batch_norm(train, self.dtype, name="stem_bn")(x))
        x = stem_pool(x)
        index = 0
        for stage, (planes, n) in enumerate(
            zip((64, 128, 256, 512), self.stage_sizes, strict=True)
        ):
            for i in range(n):
                x = self._block(planes, 2 if stage > 0 and i == 0 else 1, index)(x, train)
                index += 1
        return global_avg_pool(x)


# Builders (registered in `models.MODELS`): keyword arguments are the backbone's fields.
def resnet10(**kwargs) -> ResNet:
    return ResNet((1, 1, 1, 1), "basic", **kwargs)


def resnet18(**kwargs) -> ResNet:
    return ResNet((2, 2, 2, 2), "basic", **kwargs)


def resnet50(**kwargs) -> ResNet:
    return ResNet((3, 4, 6, 3), "bottleneck", **kwargs)


def resnext50_32x4d(**kwargs) -> ResNet:
    return ResNet((3, 4, 6, 3), "bottleneck", groups=32, width_per_group=4, **kwargs)
