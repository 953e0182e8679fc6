"""CPU fast paths (models/cpu_ops.py) compute Flax's function: convs, BatchNorm, folding, steps.

Two kinds of check, neither tuned to one CPU's rounding (issue 20):

* float64: the fast path and Flax's layers agree to float64 rounding, which is far below any
  real difference (the subtlest plausible slip, an unbiased instead of a biased variance,
  moves results by 1/n ~ 1e-3..3e-5 for these batches).
* float32: each path's error against a float64 reference on the same float32 inputs stays
  within the rounding-error bound of its sums, derived from their lengths.

The bound (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5 and
Sec. 4.2): a sum or dot product of n terms t_i, evaluated in floating point in ANY order
(one chain, blocked GEMM, pairwise tree, with or without FMA), is within
gamma_n * sum_i |t_i| of the exact value, gamma_n = n u / (1 - n u), u = 2**-24 (float32) or
2**-53 (float64). Every CPU's GEMM and reduction kernels are such evaluations, so the bound
holds on Intel and AMD alike. It is a worst case: rounding errors of random sign add up to
~sqrt(n) u sum|t_i| (seen here: 0.1-2 u sum|t_i|, results/cpu_ops_precision.md), so the
checks have ample margin, yet a path that lost precision (a half-precision accumulation, a
cancellation-prone formula) would exceed it. For BatchNorm, whose outputs pass the sums
through rsqrt and products, `_bn_bounds` propagates the sums' bounds to first order.

Whole train steps. ReLU makes a float32 step discontinuous in the rounding: an activation
within rounding distance of zero passes its gradient in one evaluation and not in another (a
flip). One flip moved a ResNet-8 conv gradient by 2e-3 of its norm (a term of weight
~1/sqrt(n) in a cancelling sum of n = 32 * 32 * 32), and whether one happens depends on each
CPU's rounding. So the former check (Flax's steps on a permuted batch as the noise scale,
the fast path within 8x of it) could fail on any CPU: it failed on an AMD EPYC (1.6e-3
against 1.5e-6), and it fails on this Intel Xeon with another data seed (3.2e-3 against
1.3e-6). Whole steps are
compared in float64 instead, where a flip needs an activation within ~1e-16 of zero, and the
float32 step check swaps ReLU for softplus, which makes the step smooth, so that the
summation bounds apply to it.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from ltkd_jax import models
from ltkd_jax.config import checks, defaults
from ltkd_jax.methods.ce import cross_entropy
from ltkd_jax.methods.kd import kd_loss
from ltkd_jax.models import cpu_ops

slow = pytest.mark.slow  # end-to-end sizes: `pytest -m "not slow"` skips them

NHWC = ("NHWC", "HWIO", "NHWC")
CONV_CASES = [  # batch, size, in, out, stride, kernel
    (4, 32, 3, 16, 1, 3),
    (4, 16, 16, 32, 2, 3),
    (3, 9, 5, 7, 2, 3),
    (2, 8, 8, 16, 2, 1),
    (2, 7, 4, 4, 1, 3),
]
# Whole models in float64. Rounding enters a result as K * u, with K (its conditioning times
# the lengths of its sums) the same for float32 and float64 evaluations of the same function
# (to first order; in float64 no ReLU flips). A float32 evaluation that keeps even one correct
# bit has K u32 < 1, so the float64 one has K u64 < 2**24 * 2**-53 = 2**-29 ~ 1.9e-9: two float64
# evaluations of the same function agree to 2**-29 relative, while every real difference is
# >= 1/n >= 6e-5 for these batches (see the module doc).
FLOAT64_MODEL_TOL = 2.0**-29


def _unit_roundoff(dtype) -> float:
    return float(np.finfo(dtype).eps) / 2


def _gamma(n: int, u: float) -> float:
    """Higham's gamma_n: the relative bound on a sum of n terms, per sum of |terms|."""
    assert n * u < 0.5
    return n * u / (1 - n * u)


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


def _max_leaf_error(a, b) -> float:
    return max(_rel(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _assert_within(got, exact, bound, what: str) -> None:
    got, exact = np.asarray(got, np.float64), np.asarray(exact, np.float64)
    excess = np.abs(got - exact) / (np.asarray(bound) + 1e-300)
    worst = float(np.max(excess))
    assert worst <= 1.0, f"{what}: error {worst:.3g} x its rounding bound"


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


# ---------------------------------------------------------------------------------------
# Convolution with the one-GEMM weight gradient
# ---------------------------------------------------------------------------------------


def _conv_and_grads(conv, x, w, stride, g):
    pad = w.shape[0] // 2
    fn = lambda a, b: conv(a, b, (stride, stride), ((pad, pad), (pad, pad)), dimension_numbers=NHWC)
    y, vjp = jax.vjp(fn, x, w)
    return (y, *vjp(g))


def _conv_inputs(case, dtype=jnp.float32):
    b, size, cin, cout, stride, k = case
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((b, size, size, cin)), dtype)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)), dtype)
    out = (size + 2 * (k // 2) - k) // stride + 1
    g = jnp.asarray(rng.standard_normal((b, out, out, cout)), dtype)
    return x, w, stride, g


def _conv_bounds(x, w, stride, g, u: float) -> list:
    """Elementwise rounding bounds of (y, dx, dw): gamma_n times the same sums of |terms|,
    which are the conv and its gradients evaluated on |x|, |w|, |g|."""
    k, cin, cout = w.shape[0], w.shape[2], w.shape[3]
    b, h, wd = x.shape[:3]
    with jax.enable_x64(True):
        abs_sums = _conv_and_grads(
            lax.conv_general_dilated, *(jnp.abs(_f64(a)) for a in (x, w)), stride, jnp.abs(_f64(g))
        )
    # terms per output: y k*k*cin; dx at most k*k*cout; dw at most one per padded position
    # (the one-GEMM form contracts over b * (h + 2p) * wo entries, the extra ones exact zeros).
    lengths = (k * k * cin, k * k * cout, b * (h + 2 * (k // 2)) * (wd + 2 * (k // 2)))
    return [_gamma(n, u) * np.asarray(s) for n, s in zip(lengths, abs_sums, strict=True)]


def _check_conv(case):
    x, w, stride, g = _conv_inputs(case)
    bound32 = _conv_bounds(x, w, stride, g, _unit_roundoff(np.float32))
    bound64 = _conv_bounds(x, w, stride, g, _unit_roundoff(np.float64))
    with jax.enable_x64(True):
        args64 = (_f64(x), _f64(w), stride, _f64(g))
        exact = _conv_and_grads(lax.conv_general_dilated, *args64)
        fast64 = _conv_and_grads(cpu_ops.conv_dwgemm, *args64)
        assert fast64[2].dtype == jnp.float64
    for name, a, b, bound in zip(("y", "dx", "dw"), fast64, exact, bound64, strict=True):
        _assert_within(a, b, 2 * bound, f"float64 {name}")
    # float32: both paths, compiled as training compiles them, against the float64 values
    for conv, options in (
        (lax.conv_general_dilated, None),
        (cpu_ops.conv_dwgemm, cpu_ops.COMPILER_OPTIONS),
    ):
        fn = jax.jit(
            functools.partial(_conv_and_grads, conv, stride=stride), compiler_options=options
        )
        got = fn(x, w, g=g)
        for name, a, b, b32, b64 in zip(
            ("y", "dx", "dw"), got, exact, bound32, bound64, strict=True
        ):
            _assert_within(a, b, b32 + b64, f"float32 {conv.__name__} {name}")


def test_conv_dwgemm_within_rounding_bounds_small():
    _check_conv(CONV_CASES[-1])


@slow
@pytest.mark.parametrize("case", CONV_CASES[:-1])
def test_conv_dwgemm_within_rounding_bounds(case):
    _check_conv(case)


def test_conv_dwgemm_falls_back_to_lax_for_other_convs():
    x = jnp.ones((2, 8, 8, 4))
    w = jnp.ones((3, 3, 4, 6))
    same = cpu_ops.conv_dwgemm(x, w, (1, 1), ((0, 2), (1, 1)), dimension_numbers=NHWC)
    ref = lax.conv_general_dilated(x, w, (1, 1), ((0, 2), (1, 1)), dimension_numbers=NHWC)
    np.testing.assert_array_equal(same, ref)


# ---------------------------------------------------------------------------------------
# BatchNorm with GEMM reductions
# ---------------------------------------------------------------------------------------


def _bn_bounds(x, g, variables, u: float, momentum: float = 0.9, eps: float = 1e-5) -> dict:
    """First-order rounding bounds of training-mode BatchNorm for ANY order of its sums.

    x, g: [n, C] inputs and output gradient. Per channel: mean and E[x^2] are sums of n terms
    (gamma_n); var = E[x^2] - mean^2 and r = rsqrt(var + eps) pass their errors on through
    their derivatives; y, dx and the parameter gradients likewise, dscale = r * sum g (x - mean)
    evaluated either centred (Flax) or as sum g x - mean sum g (the GEMM form). Each elementwise
    operation adds <= u of its operands' magnitudes (counted generously, rsqrt as 4 u). The
    neglected O(u^2) terms are covered by the final factor 2.
    """
    x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
    p, s = variables["params"], variables["batch_stats"]
    scale, bias, mean0, var0 = (
        np.asarray(a, np.float64) for a in (p["scale"], p["bias"], s["mean"], s["var"])
    )
    n = x.shape[0]
    ax, ag = np.abs(x), np.abs(g)
    mu, q = x.mean(0), (x * x).mean(0)
    var = np.maximum(q - mu * mu, 0.0)
    r = 1 / np.sqrt(var + eps)
    xc, k = x - mu, scale * r
    e_mu = _gamma(n + 1, u) * ax.sum(0) / n
    e_q = _gamma(n + 2, u) * (x * x).sum(0) / n
    e_var = e_q + 2 * np.abs(mu) * e_mu + 3 * u * (q + mu * mu)
    e_r = r * (e_var + u * (var + eps)) / (2 * (var + eps)) + 4 * u * r
    e_y = (
        np.abs(k) * e_mu
        + np.abs(scale * xc) * e_r
        + 4 * u * (np.abs(k) * (ax + np.abs(mu)) + np.abs(bias))
    )
    sg, c = g.sum(0), (g * xc).sum(0)
    dscale = r * c
    e_sg = _gamma(n, u) * ag.sum(0)
    e_c = _gamma(n + 1, u) * ((ag * ax).sum(0) + np.abs(mu) * ag.sum(0)) + e_mu * ag.sum(0)
    e_dscale = r * e_c + np.abs(c) * e_r + 2 * u * np.abs(dscale)
    # dx = k * (g - sum g / n - xhat * dscale / n), xhat = (x - mean) * r
    e_xhat = r * e_mu + np.abs(xc) * e_r + 2 * u * r * (ax + np.abs(mu))
    inner = g - sg / n - xc * r * dscale / n
    e_dx = (
        np.abs(scale) * e_r * np.abs(inner)
        + np.abs(k) * (e_sg + e_xhat * np.abs(dscale) + np.abs(xc) * r * e_dscale) / n
        + 6 * u * np.abs(k) * (ag + np.abs(sg) / n + (ax + np.abs(mu)) * r * np.abs(dscale) / n)
    )
    m = momentum
    e_mean = (1 - m) * e_mu + 3 * u * (m * np.abs(mean0) + (1 - m) * np.abs(mu))
    e_var_run = (1 - m) * e_var + 3 * u * (m * np.abs(var0) + (1 - m) * var)
    bounds = {
        "y": e_y,
        "dx": e_dx,
        "scale": e_dscale,
        "bias": e_sg,
        "mean": e_mean,
        "var": e_var_run,
    }
    return {name: 2 * b for name, b in bounds.items()}


def _bn_pair(train_mode: bool):
    kwargs = dict(use_running_average=not train_mode, momentum=0.9, epsilon=1e-5)
    return nn.BatchNorm(**kwargs), cpu_ops.BatchNorm(**kwargs)


def _bn_variables(rng, c: int) -> dict:
    return {
        "params": {
            "scale": jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32),
            "bias": jnp.asarray(rng.standard_normal(c), jnp.float32),
        },
        "batch_stats": {
            "mean": jnp.asarray(rng.standard_normal(c), jnp.float32),
            "var": jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32),
        },
    }


def _bn_train(bn, variables, x, g, options=None) -> dict:
    """{y, dx, scale, bias (gradients), mean, var (new running statistics)} of one BN layer."""

    def fn(x, params, g):
        def apply(x, params):
            v = {"params": params, "batch_stats": variables["batch_stats"]}
            return bn.apply(v, x, mutable=["batch_stats"])

        y, vjp, updates = jax.vjp(apply, x, params, has_aux=True)
        dx, dp = vjp(g)
        return {"y": y, "dx": dx, **dp, **updates["batch_stats"]}

    return jax.jit(fn, compiler_options=options)(x, variables["params"], g)


def _bn_inputs(shape, seed: int = 1):
    """float32 x with a common offset (mean 3, std 2: E[x^2] - E[x]^2 cancels), g, variables."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(3.0 + 2.0 * rng.standard_normal(shape), jnp.float32)
    g = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    return x, g, _bn_variables(rng, shape[-1])


def _check_bn_train(shape):
    x, g, variables = _bn_inputs(shape)
    flax_bn, fast_bn = _bn_pair(train_mode=True)
    with jax.enable_x64(True):
        args64 = (_f64(variables), _f64(x), _f64(g))
        exact = _bn_train(flax_bn.copy(dtype=jnp.float64), *args64)
        fast64 = _bn_train(fast_bn.copy(dtype=jnp.float64), *args64)
    assert jax.tree.structure(exact) == jax.tree.structure(fast64)
    rows = lambda a: np.reshape(a, (-1, shape[-1]))
    bound32, bound64 = (
        {
            k: np.reshape(b, np.shape(exact[k]))
            for k, b in _bn_bounds(rows(x), rows(g), variables, u).items()
        }
        for u in (_unit_roundoff(np.float32), _unit_roundoff(np.float64))
    )
    for name in exact:
        assert fast64[name].dtype == jnp.float64, name
        _assert_within(fast64[name], exact[name], 2 * bound64[name], f"float64 {name}")
    for bn, options in ((flax_bn, None), (fast_bn, cpu_ops.COMPILER_OPTIONS)):
        got = _bn_train(bn, variables, x, g, options)
        for name in exact:
            what = f"float32 {type(bn).__module__} {name}"
            _assert_within(got[name], exact[name], bound32[name] + bound64[name], what)


def test_batchnorm_train_within_rounding_bounds_small():
    """Outputs, both gradients and the running statistics, against float64 (f32 and f64)."""
    _check_bn_train((4, 5, 5, 3))


@slow
def test_batchnorm_train_within_rounding_bounds():
    _check_bn_train((32, 16, 16, 8))


@slow
def test_batchnorm_eval_matches_flax_and_has_flax_variables():
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((4, 5, 5, 3)), jnp.float32)
    variables = _bn_variables(rng, 3)
    flax_bn, fast_bn = _bn_pair(train_mode=False)
    init = lambda m: jax.tree.map(jnp.shape, m.init(jax.random.key(0), x))
    assert init(flax_bn) == init(fast_bn)
    # y = (x - mean) * (rsqrt(var + eps) * scale) + bias: no sums, a handful of roundings
    # (rsqrt counted as 4 u) of at most |x - mean| |k| + |bias| each: 10 u of that.
    p, s = (
        jax.tree.map(lambda a: np.asarray(a, np.float64), variables[k])
        for k in ("params", "batch_stats")
    )
    k = p["scale"] / np.sqrt(s["var"] + 1e-5)
    magnitude = np.abs(np.asarray(x, np.float64) - s["mean"]) * np.abs(k) + np.abs(p["bias"])
    with jax.enable_x64(True):
        exact = flax_bn.copy(dtype=jnp.float64).apply(_f64(variables), _f64(x))
        fast64 = fast_bn.copy(dtype=jnp.float64).apply(_f64(variables), _f64(x))
        assert fast64.dtype == jnp.float64
    _assert_within(fast64, exact, 20 * _unit_roundoff(np.float64) * magnitude, "float64 y")
    for bn in (flax_bn, fast_bn):
        bound = 10 * (_unit_roundoff(np.float32) + _unit_roundoff(np.float64)) * magnitude
        _assert_within(bn.apply(variables, x), exact, bound, f"float32 {type(bn).__module__} y")


def test_batchnorm_float32_parameters_get_float32_gradients_in_a_float64_model():
    """Flax computes in the layer's dtype and casts back: gradients match the parameters."""
    x, g, variables = _bn_inputs((2, 3, 3, 2))
    with jax.enable_x64(True):
        for bn in _bn_pair(train_mode=True):
            got = _bn_train(bn.copy(dtype=jnp.float64), variables, _f64(x), _f64(g))
            assert got["scale"].dtype == got["bias"].dtype == jnp.float32, type(bn)
            assert got["y"].dtype == jnp.float64


# ---------------------------------------------------------------------------------------
# Models: parameters, folding
# ---------------------------------------------------------------------------------------


@slow
@pytest.mark.parametrize("name", ["resnet8", "resnet8x4", "wrn16_2"])
def test_cpu_ops_models_have_the_flax_parameter_tree(name):
    shapes = lambda ops: jax.eval_shape(
        functools.partial(models.get_model(name, 10, ops=ops).init, train=False),
        jax.random.key(0),
        jnp.zeros((1, 32, 32, 3)),
    )
    assert jax.tree.map(jnp.shape, shapes("xla")) == jax.tree.map(jnp.shape, shapes("cpu"))


def _perturbed_stats(variables: dict) -> dict:
    """Non-trivial running statistics, so folding has something to fold."""
    leaves, tree = jax.tree.flatten(variables["batch_stats"])
    keys = jax.random.split(jax.random.key(3), len(leaves))
    leaves = [
        leaf + 0.3 * jax.random.uniform(k, leaf.shape) for leaf, k in zip(leaves, keys, strict=True)
    ]
    return {**variables, "batch_stats": jax.tree.unflatten(tree, leaves)}


@slow
def test_fold_batchnorm_one_layer_within_rounding_bounds():
    """Conv -> BN(eval) and the folded conv, float32, against float64.

    Folded: conv(x, w * k) + (beta - mean * k), k = scale * rsqrt(var + eps): the conv's sums
    of 9 * C terms (gamma_n), the kernel's and bias' own roundings (k: rsqrt, a product; <= 6 u
    of |w k| and 4 u of |beta| + |mean k|) and the final add. Unfolded: the same sums scaled by
    |k|, then BatchNorm's elementwise roundings."""
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, 8, 8, 6)), jnp.float32)
    conv_w = jnp.asarray(rng.standard_normal((3, 3, 6, 5)) / 4, jnp.float32)
    bn = _bn_variables(rng, 5)
    variables = {
        "params": {"Conv_0": {"kernel": conv_w}, "BatchNorm_0": bn["params"]},
        "batch_stats": {"BatchNorm_0": bn["batch_stats"]},
    }
    conv = lambda x, w: lax.conv_general_dilated(
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC
    )
    bn_eval = _bn_pair(train_mode=False)[0]

    def unfolded(v, x):
        y = conv(x, v["params"]["Conv_0"]["kernel"])
        stats = {
            "params": v["params"]["BatchNorm_0"],
            "batch_stats": v["batch_stats"]["BatchNorm_0"],
        }
        return bn_eval.copy(dtype=y.dtype).apply(stats, y)

    def folded(v, x):
        f = cpu_ops.fold_batchnorm(v)["params"]["Conv_0"]
        return conv(x, f["kernel"]) + f["bias"]

    with jax.enable_x64(True):
        v64, x64 = _f64(variables), _f64(x)
        exact = np.asarray(unfolded(v64, x64))
        assert {a.dtype for a in jax.tree.leaves(cpu_ops.fold_batchnorm(v64))} == {
            np.dtype(np.float64)
        }
        folded64 = np.asarray(folded(v64, x64))
        p, s = bn["params"], bn["batch_stats"]
        k = np.asarray(p["scale"], np.float64) / np.sqrt(np.asarray(s["var"], np.float64) + 1e-5)
        abs_conv = np.asarray(conv(jnp.abs(x64), jnp.abs(_f64(conv_w)) * k))  # sum |x| |w k|
    offset = np.abs(np.asarray(p["bias"], np.float64)) + np.abs(
        np.asarray(s["mean"], np.float64) * k
    )
    n = 3 * 3 * 6

    def bound(u):
        return 2 * ((_gamma(n, u) + 6 * u) * abs_conv + 6 * u * (offset + np.abs(exact)))

    u32, u64 = _unit_roundoff(np.float32), _unit_roundoff(np.float64)
    _assert_within(folded64, exact, 2 * bound(u64), "float64 folded")
    _assert_within(jax.jit(folded)(variables, x), exact, bound(u32) + bound(u64), "float32 folded")
    _assert_within(
        jax.jit(unfolded)(variables, x), exact, bound(u32) + bound(u64), "float32 conv+BN"
    )


@slow
@pytest.mark.parametrize("name", ["resnet8", "resnet8x4"])
def test_folded_teacher_matches_unfolded_in_float64(name):
    """Logits and features of the folded model (ops='folded') and the unfolded one."""
    model = models.get_model(name, 10, dtype=jnp.float64)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    with jax.enable_x64(True):
        x = _f64(x)
        variables = _f64(_perturbed_stats(_init(name, 32)))
        folded_model, folded = models.fold_for_inference(model, variables)
        assert folded_model.backbone.ops == "folded" and "batch_stats" not in folded
        got = jax.jit(functools.partial(folded_model.apply, train=False))(folded, x)
        want = jax.jit(functools.partial(model.apply, train=False))(variables, x)
        for a, b in zip(got, want, strict=True):
            assert a.dtype == jnp.float64
            assert _rel(a, b) < FLOAT64_MODEL_TOL
        with pytest.raises(ValueError, match="inference-only"):
            folded_model.apply(folded, x, train=True, mutable=["batch_stats"])


@slow
def test_pre_activation_models_are_not_folded():
    model = models.get_model("wrn16_2", 10)
    variables = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 32, 32, 3))
    )
    assert models.fold_for_inference(model, variables) == (model, variables)


def test_cpu_kernels_setting():
    assert cpu_ops.cpu_kernels_enabled("auto") == (jax.default_backend() == "cpu")
    assert cpu_ops.cpu_kernels_enabled("on") and not cpu_ops.cpu_kernels_enabled("off")
    assert cpu_ops.compiler_options("off") is None
    assert cpu_ops.compiler_options("on") == cpu_ops.COMPILER_OPTIONS
    assert cpu_ops.model_ops("on") == "cpu" and cpu_ops.model_ops("off") == "xla"
    with pytest.raises(ValueError, match="cpu_kernels"):
        cpu_ops.cpu_kernels_enabled("yes")
    config = defaults.base_config()
    config.model.cpu_kernels = "yes"
    with pytest.raises(ValueError, match="model.cpu_kernels"):
        checks.validate_config(config)


# ---------------------------------------------------------------------------------------
# Whole train steps
# ---------------------------------------------------------------------------------------


def _batches(steps: int, batch: int, size: int, classes: int = 10):
    """Random uint8 images normalised like the train step, and labels (seeded)."""
    rng = np.random.default_rng(0)
    for _ in range(steps):
        images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        yield (images.astype(np.float32) / 255 - 0.5) / 0.25, rng.integers(0, classes, batch)


@functools.cache
def _init(name: str, size: int) -> dict:
    """Flax's initial float32 variables (the CPU kernels' are the same), as numpy arrays."""
    model = models.get_model(name, 10)
    init = jax.jit(functools.partial(model.init, train=False))
    return jax.tree.map(np.asarray, init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def _train(
    setting: str,
    dtype,
    steps: int,
    *,
    name: str = "resnet8",
    batch: int = 32,
    size: int = 32,
    teacher: tuple | None = None,
) -> dict:
    """{params, batch_stats, loss} after `steps` SGD steps from Flax's init, cpu_kernels=`setting`.

    The train step's math (training/steps.py train_step, optim.make_optimizer: coupled weight decay,
    momentum), computed in `dtype` throughout: CE, or with `teacher` = (model, variables) KD
    from that frozen teacher, folded when the CPU kernels are on (as runs/teachers.py folds it).
    """
    model = models.get_model(name, 10, ops=cpu_ops.model_ops(setting), dtype=dtype)
    variables = _init(name, size)
    params, stats = jax.tree.map(
        lambda a: jnp.asarray(a, dtype), (variables["params"], variables["batch_stats"])
    )
    tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.1, momentum=0.9))
    teacher_model, teacher_variables = teacher or (None, None)
    if teacher is not None and cpu_ops.cpu_kernels_enabled(setting):
        teacher_model, teacher_variables = models.fold_for_inference(*teacher)

    def step(params, stats, opt, x, labels, teacher_variables):
        def loss_fn(p):
            v = {"params": p, "batch_stats": stats}
            (logits, _), updates = model.apply(v, x, train=True, mutable=["batch_stats"])
            if teacher_model is None:
                return cross_entropy(logits, labels=labels)[0], updates["batch_stats"]
            teacher_logits, _ = teacher_model.apply(teacher_variables, x, train=False)
            loss = kd_loss(logits, labels=labels, teacher_logits=teacher_logits)[0]
            return loss, updates["batch_stats"]

        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), stats, opt, loss

    step = jax.jit(step, compiler_options=cpu_ops.compiler_options(setting))
    opt, losses = tx.init(params), []
    for x, labels in _batches(steps, batch, size):
        x = jnp.asarray(x, dtype)
        params, stats, opt, loss = step(params, stats, opt, x, labels, teacher_variables)
        losses.append(loss)
    return {"params": params, "batch_stats": stats, "loss": jnp.stack(losses)}


def _check_steps_float64(steps: int, **kwargs) -> None:
    with jax.enable_x64(True):
        fast, flax_ = (_train(s, jnp.float64, steps, **kwargs) for s in ("on", "off"))
    for tree in (fast, flax_):
        assert {a.dtype for a in jax.tree.leaves(tree)} == {np.dtype(np.float64)}
    assert _max_leaf_error(fast, flax_) < FLOAT64_MODEL_TOL


def test_train_step_cpu_kernels_on_and_off_match_in_float64_small():
    """The fast suite's end-to-end check of both paths (cpu_kernels=on: cpu_ops' layers and
    compiler options; off: Flax's own layers, the path of GPU runs): one CE step of ResNet-8
    on a batch of four 8x8 images."""
    _check_steps_float64(1, batch=4, size=8)


@slow
def test_train_steps_cpu_kernels_on_and_off_match_in_float64():
    """Two CE steps of ResNet-8 (momentum and the running averages at work), batch 16, CIFAR
    shapes: params, batch stats and losses."""
    _check_steps_float64(2, batch=16)


@slow
def test_distillation_steps_cpu_kernels_on_and_off_match_in_float64():
    """Two KD steps of ResNet-8 from a frozen ResNet-8 teacher (folded when the kernels are
    on, as runs/teachers.py folds it), batch 16."""
    teacher = models.get_model("resnet8", 10, dtype=jnp.float64)
    with jax.enable_x64(True):
        variables = _f64(_perturbed_stats(_init("resnet8", 32)))
    _check_steps_float64(2, batch=16, teacher=(teacher, variables))


def _sum_terms(model, variables, x, labels) -> dict:
    """For every Conv and BatchNorm of `model`: its input and the loss gradient at its output
    (one CE train step), by module path; captured with Flax's method interception."""
    kinds = (nn.Conv, nn.BatchNorm, cpu_ops.BatchNorm)
    modules = {}

    def loss(perturbations):
        inputs = {}

        def intercept(call, args, kwargs, context):
            if context.method_name != "__call__" or not isinstance(context.module, kinds):
                return call(*args, **kwargs)
            inputs[context.module.path] = args[0]
            modules[context.module.path] = context.module
            return call(*args, **kwargs) + perturbations[context.module.path]

        with nn.intercept_methods(intercept):
            (logits, _), _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
        return cross_entropy(logits, labels=labels)[0], inputs

    shapes = {}

    def record_shapes(call, args, kwargs, context):
        out = call(*args, **kwargs)
        if context.method_name == "__call__" and isinstance(context.module, kinds):
            shapes[context.module.path] = jax.ShapeDtypeStruct(out.shape, out.dtype)
        return out

    with nn.intercept_methods(record_shapes):
        jax.eval_shape(lambda: model.apply(variables, x, train=True, mutable=["batch_stats"]))
    zeros = {path: jnp.zeros(s.shape, s.dtype) for path, s in shapes.items()}
    grads, inputs = jax.jit(jax.grad(loss, has_aux=True))(zeros)
    return {path: (x_in, grads[path], modules[path]) for path, x_in in inputs.items()}


@slow
def test_train_step_float32_gradients_within_rounding_bounds(monkeypatch):
    """One CE step of ResNet-8 (batch 32, CIFAR shapes) in float32, both paths, against
    float64 at the same initial state: every conv kernel gradient, BN scale and bias gradient
    and new running statistic within the rounding bound of its last sum (gamma_n on the
    |terms| of the float64 step; n = 32 * 34 * 34 for the stem).

    ReLU is replaced by softplus here. With ReLU a step is discontinuous in the rounding: an
    activation within rounding distance of zero passes its gradient in one evaluation and not
    in another (a flip), which no rounding bound covers (one such flip put the fast path at 3x
    this bound on one data seed; Flax's layers are as exposed, on other seeds). The smooth step
    tests what the kernels change, the order of the sums; the terms' own rounding, inherited
    from the layers before, stays far inside the worst case gamma_n ~ n u (~sqrt(n) times the
    typical rounding of a sum)."""
    calls = []

    def softplus(x):
        calls.append(x.shape)
        return jax.nn.softplus(x)

    monkeypatch.setattr(nn, "relu", softplus)  # what layers.py and resnet_cifar.py call
    x, labels = next(_batches(1, 32, 32))
    u32, u64 = _unit_roundoff(np.float32), _unit_roundoff(np.float64)
    gammas = lambda n: _gamma(n, u32) + _gamma(n, u64)  # float32 result, float64 reference
    with jax.enable_x64(True):
        model = models.get_model("resnet8", 10, dtype=jnp.float64)
        init = _f64(_init("resnet8", 32))
        terms = _sum_terms(model, init, _f64(x), labels)
        dw_of_abs = jax.jit(
            lambda x, w, g, s: _conv_and_grads(lax.conv_general_dilated, x, w, s, g)[2],
            static_argnums=3,
        )
        bounds = {}
        for path, (x_in, g_out, module) in terms.items():
            if isinstance(module, nn.Conv):  # sum over positions of |x| |g| per kernel entry
                (s, _), pad = module.strides, module.kernel_size[0] // 2
                w = _subtree(init["params"], path)["kernel"]
                abs_terms = dw_of_abs(jnp.abs(x_in), jnp.abs(w), jnp.abs(g_out), s)
                b, h, wd = x_in.shape[:3]
                n = b * (h + 2 * pad) * (wd + 2 * pad)
                bounds[("params", *path, "kernel")] = gammas(n) * np.asarray(abs_terms)
                continue
            rows = lambda a, c=x_in.shape[-1]: np.reshape(a, (-1, c))
            v = {k: _subtree(init[k], path) for k in ("params", "batch_stats")}
            b32, b64 = (_bn_bounds(rows(x_in), rows(g_out), v, u) for u in (u32, u64))
            for kind, names in (("params", ("scale", "bias")), ("batch_stats", ("mean", "var"))):
                for name in names:
                    bounds[(kind, *path, name)] = b32[name] + b64[name]
        exact = _one_step_gradients("off", jnp.float64, x, labels)
    assert len(bounds) == 7 + 7 * 4  # 7 conv kernels; scale, bias, mean, var of 7 BatchNorms
    assert len(calls) >= 7  # the activations were replaced
    for setting in ("off", "on"):
        got = _one_step_gradients(setting, jnp.float32, x, labels)
        for key, bound in bounds.items():
            what = f"cpu_kernels={setting} {key}"
            _assert_within(_subtree(got, key), _subtree(exact, key), bound, what)


def _subtree(tree: dict, path: tuple):
    for name in path:
        tree = tree[name]
    return tree


def _one_step_gradients(setting: str, dtype, x, labels) -> dict:
    """{params: gradients, batch_stats: new running statistics} of one CE step from init."""
    model = models.get_model("resnet8", 10, ops=cpu_ops.model_ops(setting), dtype=dtype)
    init = jax.tree.map(lambda a: jnp.asarray(a, dtype), _init("resnet8", 32))

    def loss_fn(params, x):
        v = {"params": params, "batch_stats": init["batch_stats"]}
        (logits, _), updates = model.apply(v, x, train=True, mutable=["batch_stats"])
        return cross_entropy(logits, labels=labels)[0], updates["batch_stats"]

    fn = jax.jit(
        jax.grad(loss_fn, has_aux=True), compiler_options=cpu_ops.compiler_options(setting)
    )
    grads, stats = fn(init["params"], jnp.asarray(x, dtype))
    return {"params": grads, "batch_stats": stats}
