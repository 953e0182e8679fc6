"""CIFAR ResNets and Wide ResNets in Flax Linen, NHWC (methods.md 5.2, 7.2).

- :class:`CifarResNet`: He et al. CIFAR ResNet-8/20/32/56/110 as in the BKD / LDAM code
  (``models/resnet_cifar.py``): 16/32/64 channels, option-A (parameter-free) shortcuts.
- :class:`ResNetX4`: CRD / mdistiller ``ResNet(depth, [32, 64, 128, 256])`` (resnet8x4,
  resnet32x4): option-B (1x1 conv + BN) shortcuts.
- :class:`WideResNet`: Zagoruyko WRN as in CRD / mdistiller (wrn_16_2, wrn_40_2):
  pre-activation blocks, dropout 0.

Every model maps normalised float images [B, H, W, C_in] (any H, W, C_in) to
``(logits [B, num_classes], features [B, D])``; ``features`` is the globally pooled
penultimate vector, or the output of the optional CBD projection (methods.md 8.2).
Parameters are always float32; ``dtype`` is the computation dtype.
``ops`` picks the layers (`cpu_ops.OPS`): Flax's, the CPU kernels of `cpu_ops` (same
parameters), or, for inference, BatchNorm folded into the convolutions.

Init everywhere (methods.md 5.2): Kaiming-normal fan_in on conv and linear weights, PyTorch
default uniform linear bias, BN scale 1 / bias 0. (mdistiller initialises its WRN / x4 convs
with fan_out; we use one rule for all models so teachers and students are comparable.)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ltkd_jax.models import cpu_ops
from ltkd_jax.models.heads import kaiming_normal, linear, make_head

Dtype = Any


def _conv(
    features: int,
    kernel: int,
    stride: int,
    dtype: Dtype,
    name: str | None = None,
    ops: str = "xla",
    *,
    groups: int = 1,
) -> nn.Conv:
    """A bias-free conv; with ``ops='folded'`` it carries its folded BatchNorm as a bias."""
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
        kernel_init=kaiming_normal,
        dtype=dtype,
        param_dtype=jnp.float32,
        name=name,
        conv_general_dilated_cls=cpu_ops.DwGemmConv if ops == "cpu" else None,
    )


def _bn(
    train: bool, dtype: Dtype, name: str | None = None, ops: str = "xla", zero_scale: bool = False
):
    """BatchNorm (`cpu_ops.BatchNorm` for ``ops='cpu'``; the identity once folded)."""
    if ops == "folded":
        if train:
            raise ValueError("a model with BatchNorm folded into its convs is inference-only")
        return lambda x: x
    # momentum 0.9 == PyTorch momentum 0.1 and Keras 0.9 (checklist 14); Flax's default 0.99
    # would make the running statistics lag. No axis_name: under jit with a sharded batch the
    # statistics are already global, and axis_name fails outside pmap (style.md 2.a).
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


def option_a_shortcut(x: jax.Array, planes: int) -> jax.Array:
    """He et al. option A: subsample by 2 and zero-pad ``planes // 4`` channels on each side.

    Parameter-free, which is why the BKD/LDAM ResNet-32 has 0.46M parameters; it assumes the
    block doubles the channels (16 -> 32 -> 64), as every downsampling block here does.
    """
    x = x[:, ::2, ::2, :]
    pad = planes // 4
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad, pad)))


def _pool_and_classify(
    x: jax.Array,
    *,
    num_classes: int,
    head: str,
    projection_dim: int | None,
    dtype: Dtype,
    regressor_dim: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Global average pool -> [CBD projection + ReLU] -> head named ``classifier``.

    With `regressor_dim`, the returned features are a linear map of the pooled features to
    that width (KRDistill's regressor g onto the teacher's feature width, methods.md 7.2), a
    side branch the classifier does not see.

    Called from the models' compact ``__call__``, so the submodules belong to that model.
    """
    features = jnp.mean(x, axis=(1, 2))
    if projection_dim is not None:
        # methods.md 8.2: CBD students distil the post-projection vector.
        # Keras Dense defaults, as the official CBD code builds it: Glorot-uniform, zero bias.
        proj = nn.Dense(
            projection_dim,
            dtype=dtype,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.glorot_uniform(),
            bias_init=nn.initializers.zeros,
            name="projection",
        )
        features = nn.relu(proj(features))
    logits = make_head(head, num_classes, features.shape[-1], dtype=dtype)(features)
    if regressor_dim is not None:
        features = linear(regressor_dim, features.shape[-1], dtype=dtype, name="regressor")(
            features
        )
    return logits, features


class BasicBlockA(nn.Module):
    """Post-activation basic block with option-A shortcut (BKD / LDAM ``BasicBlock``)."""

    planes: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    ops: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out = _conv(self.planes, 3, self.stride, self.dtype, ops=self.ops)(x)
        out = nn.relu(_bn(train, self.dtype, ops=self.ops)(out))
        out = _conv(self.planes, 3, 1, self.dtype, ops=self.ops)(out)
        out = _bn(train, self.dtype, ops=self.ops)(out)
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = option_a_shortcut(x, self.planes)
        return nn.relu(out + x)


class BasicBlockB(nn.Module):
    """Post-activation basic block with option-B (1x1 conv + BN) shortcut (mdistiller)."""

    planes: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    ops: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out = _conv(self.planes, 3, self.stride, self.dtype, ops=self.ops)(x)
        out = nn.relu(_bn(train, self.dtype, ops=self.ops)(out))
        out = _conv(self.planes, 3, 1, self.dtype, ops=self.ops)(out)
        out = _bn(train, self.dtype, ops=self.ops)(out)
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = _conv(self.planes, 1, self.stride, self.dtype, name="shortcut_conv", ops=self.ops)(
                x
            )
            x = _bn(train, self.dtype, name="shortcut_bn", ops=self.ops)(x)
        return nn.relu(out + x)


class WideBasicBlock(nn.Module):
    """Pre-activation WRN block (CRD / mdistiller ``wrn.BasicBlock``, dropout 0).

    When the shape changes, the pre-activated input feeds both the residual branch and the 1x1
    shortcut conv; otherwise the shortcut is the raw input.
    """

    planes: int
    stride: int = 1
    dtype: Dtype = jnp.float32
    ops: str = "xla"

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        identity = x.shape[-1] == self.planes and self.stride == 1
        pre = nn.relu(_bn(train, self.dtype, ops=self.ops)(x))
        out = _conv(self.planes, 3, self.stride, self.dtype, ops=self.ops)(pre)
        out = nn.relu(_bn(train, self.dtype, ops=self.ops)(out))
        out = _conv(self.planes, 3, 1, self.dtype, ops=self.ops)(out)
        if identity:
            shortcut = x
        else:
            shortcut = _conv(
                self.planes, 1, self.stride, self.dtype, name="shortcut_conv", ops=self.ops
            )(pre)
        return out + shortcut


def _post_activation_resnet(
    model: nn.Module, x: jax.Array, train: bool, stem: int, widths: Sequence[int], block
) -> tuple[jax.Array, jax.Array]:
    """conv3x3(stem) -> BN -> ReLU -> one stage of n `block`s per width (stride 2 from the
    second stage) -> pool and classify; the body of `model`'s compact ``__call__`` (ResNet-6n+2).
    """
    if (model.depth - 2) % 6:
        raise ValueError(f"{type(model).__name__} depth must be 6n+2, got {model.depth}")
    n = (model.depth - 2) // 6
    x = _conv(stem, 3, 1, model.dtype, ops=model.ops)(x.astype(model.dtype))
    x = nn.relu(_bn(train, model.dtype, ops=model.ops)(x))
    for stage, planes in enumerate(widths):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            x = block(planes, stride, model.dtype, model.ops)(x, train)
    return _pool_and_classify(
        x,
        num_classes=model.num_classes,
        head=model.head,
        projection_dim=model.projection_dim,
        dtype=model.dtype,
        regressor_dim=model.regressor_dim,
    )


class CifarResNet(nn.Module):
    """He et al. CIFAR ResNet-(6n+2), option-A shortcuts (methods.md 5.2).

    conv3x3(16) -> BN -> ReLU -> 3 stages of n blocks (16/32/64 channels, strides 1/2/2)
    -> GAP -> classifier. ResNet-32: 0.46M parameters at C = 10 (0.47M at C = 100).
    """

    foldable = True  # post-activation: every BN follows a conv (cpu_ops.fold_batchnorm)

    depth: int
    num_classes: int
    widths: Sequence[int] = (16, 32, 64)
    head: str = "linear"
    projection_dim: int | None = None
    regressor_dim: int | None = None
    dtype: Dtype = jnp.float32
    ops: str = "xla"  # cpu_ops.OPS

    @property
    def feature_dim(self) -> int:
        return self.regressor_dim or self.projection_dim or self.widths[-1]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        return _post_activation_resnet(self, x, train, self.widths[0], self.widths, BasicBlockA)


class ResNetX4(nn.Module):
    """CRD / mdistiller ``ResNet(depth, num_filters)`` with option-B shortcuts.

    ``num_filters = (stem, stage1, stage2, stage3)``; resnet8x4 / resnet32x4 use
    (32, 64, 128, 256), so the first block of every stage has a 1x1 conv shortcut.
    """

    foldable = True  # post-activation: every BN follows a conv (cpu_ops.fold_batchnorm)

    depth: int
    num_classes: int
    num_filters: Sequence[int] = (32, 64, 128, 256)
    head: str = "linear"
    projection_dim: int | None = None
    regressor_dim: int | None = None
    dtype: Dtype = jnp.float32
    ops: str = "xla"  # cpu_ops.OPS

    @property
    def feature_dim(self) -> int:
        return self.regressor_dim or self.projection_dim or self.num_filters[-1]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        stem, *widths = self.num_filters
        return _post_activation_resnet(self, x, train, stem, widths, BasicBlockB)


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis) as in CRD / mdistiller, dropout 0.

    conv3x3(16) -> 3 stages of n = (depth-4)/6 pre-activation blocks (16k/32k/64k channels,
    strides 1/2/2) -> BN -> ReLU -> GAP -> classifier.
    """

    depth: int
    widen_factor: int
    num_classes: int
    head: str = "linear"
    projection_dim: int | None = None
    regressor_dim: int | None = None
    dtype: Dtype = jnp.float32
    ops: str = "xla"  # cpu_ops.OPS

    @property
    def feature_dim(self) -> int:
        return self.regressor_dim or self.projection_dim or 64 * self.widen_factor

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
        if self.ops == "folded":
            raise ValueError("pre-activation BatchNorm cannot be folded into a conv")
        if (self.depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {self.depth}")
        n = (self.depth - 4) // 6
        k = self.widen_factor
        x = _conv(16, 3, 1, self.dtype, ops=self.ops)(x.astype(self.dtype))
        for stage, planes in enumerate((16 * k, 32 * k, 64 * k)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                x = WideBasicBlock(planes, stride, self.dtype, self.ops)(x, train)
        x = nn.relu(_bn(train, self.dtype, ops=self.ops)(x))
        return _pool_and_classify(
            x,
            num_classes=self.num_classes,
            head=self.head,
            projection_dim=self.projection_dim,
            dtype=self.dtype,
            regressor_dim=self.regressor_dim,
        )


resnet8 = functools.partial(CifarResNet, 8)
resnet20 = functools.partial(CifarResNet, 20)
resnet32 = functools.partial(CifarResNet, 32)
resnet56 = functools.partial(CifarResNet, 56)
resnet110 = functools.partial(CifarResNet, 110)
resnet8x4 = functools.partial(ResNetX4, 8)
resnet32x4 = functools.partial(ResNetX4, 32)
wrn16_2 = functools.partial(WideResNet, 16, 2)
wrn40_2 = functools.partial(WideResNet, 40, 2)
