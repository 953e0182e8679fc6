"""CPU fast paths for the CIFAR ResNets: same parameters, same results, faster XLA:CPU programs.

On XLA:CPU (2 AVX-512 cores) most of a ResNet-32 train step is its convolutions, which XLA
runs with Eigen kernels at about 40% of the speed of PyTorch's oneDNN ones over forward and
both gradients (75% forward only). They run as asynchronous thunks, so profiler traces
under-report them; `scripts/benchmark.py --convs` times them alone. Around them, time goes to
(1) the layout transposes XLA inserts for the weight-gradient convolutions and (2) BatchNorm's
per-channel reductions, which XLA:CPU emits as slow loop nests. Hence:

- :func:`conv_dwgemm`: a convolution whose weight gradient is one GEMM over shifted copies of
  the input and the output gradient (no batch-minor transposes); forward and input gradient
  stay XLA's.
- :class:`BatchNorm`: ``flax.linen.BatchNorm`` (same variables, same E[x^2] - E[x]^2 biased
  variance, same running-average update) whose reductions, forward and backward, are GEMMs.
- :func:`fold_batchnorm`: BatchNorm folded into the preceding convolution of an inference-only
  (frozen teacher) model.
- :data:`COMPILER_OPTIONS`: turns off XLA:CPU's YNNPACK fusions, slower here for the
  weight-gradient convolutions and dots.

`ops` names the implementation a model is built with: ``"xla"`` (Flax's own layers),
``"cpu"`` (the kernels above) or ``"folded"`` (inference only; convs carry the folded BN).

Accuracy: the same function as Flax's layers (float64 agreement to ~1e-15), and in float32
the GEMM sums are as accurate as Flax's reductions against float64 (the one-GEMM weight
gradient often more); tests/test_cpu_ops.py bounds both by the sums' lengths, and
results/cpu_ops_precision.md has the measurements.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

OPS = ("xla", "cpu", "folded")
CPU_KERNELS = ("auto", "on", "off")
# Empty = no YNNPACK fusion kinds: XLA's own emitters and Eigen/oneDNN GEMMs and convs.
COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
_NHWC = ("NHWC", "HWIO", "NHWC")


def cpu_kernels_enabled(setting: str) -> bool:
    """config.model.cpu_kernels: 'auto' = on when JAX's default backend is the CPU."""
    if setting not in CPU_KERNELS:
        raise ValueError(f"cpu_kernels={setting!r}; choose one of {list(CPU_KERNELS)}")
    return setting == "on" or (setting == "auto" and jax.default_backend() == "cpu")


def model_ops(setting: str) -> str:
    """The `ops` a trained model is built with under `cpu_kernels=setting`."""
    return "cpu" if cpu_kernels_enabled(setting) else "xla"


def compiler_options(setting: str) -> dict[str, Any] | None:
    """The `jax.jit(compiler_options=...)` that go with `cpu_kernels=setting`."""
    return dict(COMPILER_OPTIONS) if cpu_kernels_enabled(setting) else None


# ---------------------------------------------------------------------------------------
# Convolution with a one-GEMM weight gradient
# ---------------------------------------------------------------------------------------


def _conv(x: jax.Array, w: jax.Array, stride: int, pad: int) -> jax.Array:
    return lax.conv_general_dilated(
        x, w, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=_NHWC
    )


def weight_grad_gemm(x: jax.Array, g: jax.Array, kernel: int, stride: int, pad: int) -> jax.Array:
    """dW[i, j, c, o] = sum_{b,h,w} xpad[b, s*h+i, s*w+j, c] * g[b, h, w, o] as one GEMM.

    x [B, H, W, C] and g [B, Ho, Wo, O] are NHWC. Column shifts of the padded input,
    X[b, r, w, (j, c)] = xpad[b, r, s*w+j, c], meet row-shifted copies of the gradient,
    G[b, s*h+i, w, (i, o)] = g[b, h, w, o] (zero elsewhere); contracting over (b, r, w) gives
    dW as a [(j, c), (i, o)] matrix with float32 accumulation.
    """
    b, h, _, c = x.shape
    _, ho, wo, o = g.shape
    rows = h + 2 * pad
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    cols = [
        lax.slice(xp, (0, 0, j, 0), (b, rows, j + (wo - 1) * stride + 1, c), (1, 1, stride, 1))
        for j in range(kernel)
    ]
    zero = jnp.zeros((), g.dtype)
    span = (ho - 1) * stride + 1
    shifted = [
        lax.pad(g, zero, ((0, 0, 0), (i, rows - i - span, stride - 1), (0, 0, 0), (0, 0, 0)))
        for i in range(kernel)
    ]
    xs = jnp.concatenate(cols, axis=-1).reshape(-1, kernel * c)
    gs = jnp.concatenate(shifted, axis=-1).reshape(-1, kernel * o)
    acc = jnp.promote_types(xs.dtype, jnp.float32)
    dw = lax.dot_general(xs, gs, (((0,), (0,)), ((), ())), preferred_element_type=acc)
    return dw.reshape(kernel, c, kernel, o).transpose(2, 0, 1, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_dwgemm(x: jax.Array, w: jax.Array, stride: int, pad: int) -> jax.Array:
    return _conv(x, w, stride, pad)


def _conv_dwgemm_fwd(x, w, stride, pad):
    return _conv(x, w, stride, pad), (x, w)


def _conv_dwgemm_bwd(stride, pad, residuals, g):
    x, w = residuals
    _, input_vjp = jax.vjp(lambda a: _conv(a, w, stride, pad), x)
    (dx,) = input_vjp(g)
    dw = weight_grad_gemm(x, g, w.shape[0], stride, pad).astype(w.dtype)
    return dx, dw


_conv_dwgemm.defvjp(_conv_dwgemm_fwd, _conv_dwgemm_bwd)


def _is_nhwc(dimension_numbers) -> bool:
    if dimension_numbers is None:
        return False
    if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
        return dimension_numbers == lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), _NHWC)
    return tuple(dimension_numbers) == _NHWC


def conv_dwgemm(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides,
    padding,
    *,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
) -> jax.Array:
    """`lax.conv_general_dilated` (Flax's call signature) with the one-GEMM weight gradient.

    Covers what the CIFAR ResNets use: NHWC/HWIO, square kernels, equal strides, symmetric
    padding k // 2, no dilation or groups. Anything else falls back to `lax`.
    """
    strides = tuple(window_strides)
    pads = {p for pair in padding for p in pair} if not isinstance(padding, str) else set()
    kernel = rhs.shape[0]
    plain = (
        _is_nhwc(dimension_numbers)
        and rhs.shape[0] == rhs.shape[1]
        and len(set(strides)) == 1
        and pads == {kernel // 2}
        and all(d == 1 for d in (lhs_dilation or (1,)) + (rhs_dilation or (1,)))
        and feature_group_count == 1
        and precision is None
    )
    if not plain:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            precision=precision,
        )
    return _conv_dwgemm(lhs, rhs, strides[0], kernel // 2)


class DwGemmConv:
    """For `nn.Conv(conv_general_dilated_cls=DwGemmConv)`: Flax instantiates, then calls it."""

    def __call__(self, *args, **kwargs) -> jax.Array:
        return conv_dwgemm(*args, **kwargs)


# ---------------------------------------------------------------------------------------
# BatchNorm with GEMM reductions
# ---------------------------------------------------------------------------------------


def _column_sum(x: jax.Array) -> jax.Array:
    """[G, M, C] -> [C]: G GEMVs over M, then a sum over G.

    GEMMs because XLA:CPU's reduce loops are several times slower; in G groups because one
    float32 accumulation chain over all B*H*W rows loses ~1e-5 relative accuracy.
    """
    ones = jnp.ones(x.shape[:2], x.dtype)
    return jnp.sum(lax.dot_general(ones, x, (((1,), (1,)), ((0,), (0,)))), axis=0)


def _column_dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """sum_{g,m} a[g, m, c] * b[g, m, c] -> [C]: diagonals of G small C x C GEMMs."""
    per_group = lax.dot_general(a, b, (((1,), (1,)), ((0,), (0,))))
    return jnp.sum(jnp.diagonal(per_group, axis1=1, axis2=2), axis=0)


def _grouped(x: jax.Array) -> jax.Array:
    """NHWC -> [B, H*W, C]: one reduction group per image."""
    return x.reshape(x.shape[0], -1, x.shape[-1])


def _batch_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Flax's default (fast) statistics: mean and max(E[x^2] - E[x]^2, 0)."""
    x3 = _grouped(x)
    n = x3.shape[0] * x3.shape[1]
    mean = _column_sum(x3) / n
    var = jnp.maximum(_column_dot(x3, x3) / n - mean * mean, 0.0)
    return mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(
    x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(normalised x, batch mean, batch var) of float32 NHWC x; gradients flow through y only."""
    return _bn_forward(x, scale, bias, epsilon)[0]


def _bn_forward(x, scale, bias, epsilon):
    mean, var = _batch_stats(x)
    inv = lax.rsqrt(var + epsilon)
    y = (x - mean) * (inv * scale) + bias
    return (y, mean, var), (x, mean, inv, scale)


def _bn_backward(epsilon, residuals, cotangents):
    del epsilon
    x, mean, inv, scale = residuals
    g = cotangents[0]  # the statistics are only read under stop_gradient
    n = x.size // x.shape[-1]
    g3 = _grouped(g)
    dbias = _column_sum(g3)
    dscale = inv * (_column_dot(g3, _grouped(x)) - mean * dbias)  # sum(g * xhat)
    xhat = (x - mean) * inv
    dx = (scale * inv) * (g - dbias / n - xhat * (dscale / n))
    return dx, dscale, dbias


batch_norm_train.defvjp(_bn_forward, _bn_backward)


class BatchNorm(nn.Module):
    """Drop-in for the models' `nn.BatchNorm(momentum, epsilon)` with GEMM reductions.

    Same variable names, initialisers and semantics: statistics in float32, biased batch
    variance in the normalisation and in the running average, no update during init.
    """

    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        # Compute in x's dtype, as Flax does: float32 parameters of a float64 model get their
        # gradients back in float32 (through the casts), not in float64.
        scale, bias = scale.astype(x.dtype), bias.astype(x.dtype)
        if self.use_running_average:
            inv = lax.rsqrt(ra_var.value.astype(x.dtype) + self.epsilon) * scale
            return ((x - ra_mean.value.astype(x.dtype)) * inv + bias).astype(self.dtype)
        y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            m = self.momentum
            ra_mean.value = m * ra_mean.value + (1 - m) * lax.stop_gradient(mean)
            ra_var.value = m * ra_var.value + (1 - m) * lax.stop_gradient(var)
        return y.astype(self.dtype)


# ---------------------------------------------------------------------------------------
# BatchNorm folded into the convolutions of a frozen model
# ---------------------------------------------------------------------------------------

# Conv -> BN pairs of the post-activation CIFAR blocks and stems, by Flax module name.
_PAIRS = (("Conv_0", "BatchNorm_0"), ("Conv_1", "BatchNorm_1"), ("shortcut_conv", "shortcut_bn"))


def _fold_pair(conv: dict, bn: dict, stats: dict, epsilon: float) -> dict:
    k = bn["scale"] * lax.rsqrt(stats["var"] + epsilon)
    return {"kernel": conv["kernel"] * k, "bias": bn["bias"] - stats["mean"] * k}


def fold_batchnorm(variables: dict, epsilon: float = 1e-5) -> dict:
    """{params, batch_stats} of a post-activation model -> {params} of its `ops='folded'` twin.

    Each Conv followed by a BatchNorm becomes a Conv with kernel w * scale / sqrt(var + eps)
    and bias beta - mean * scale / sqrt(var + eps); the BatchNorms disappear.
    """

    def fold(params: dict, stats: dict) -> dict:
        out = {}
        for name, sub in params.items():
            if name in stats and not any(name == bn for _, bn in _PAIRS):
                out[name] = fold(sub, stats[name])
            elif not any(name == bn for _, bn in _PAIRS):
                out[name] = sub
        for conv, bn in _PAIRS:
            if conv in params and bn in params:
                out[conv] = _fold_pair(params[conv], params[bn], stats[bn], epsilon)
        return out

    return {"params": fold(variables["params"], variables["batch_stats"])}
