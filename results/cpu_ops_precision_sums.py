"""Float32 accuracy of the CPU fast path's long sums and of Flax's, both against float64
(results/cpu_ops_precision.md).

ResNet-32 layer shapes at batch 128 (CIFAR). For each conv weight gradient and each
training-mode BatchNorm, the float32 result of Flax's path (compiled as cpu_kernels=off
compiles it) and of models/cpu_ops.py (with cpu_ops.COMPILER_OPTIONS, as cpu_kernels=on
compiles it) are compared with float64 on the same float32 inputs. Errors are printed in
units of u * sum|terms| (u = 2**-24): any summation order is within n of these units (the
worst case); random rounding errors give ~sqrt(n) at most, usually ~1.

    python results/cpu_ops_precision_sums.py [--batch=128]
"""

from __future__ import annotations

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ltkd_jax.models import cpu_ops

U = 2.0**-24
NHWC = ("NHWC", "HWIO", "NHWC")
CONVS = [
    (32, 3, 16, 1),
    (32, 16, 16, 1),
    (32, 16, 32, 2),
    (16, 32, 32, 1),
    (16, 32, 64, 2),
    (8, 64, 64, 1),
]
NORMS = [(32, 16), (16, 32), (8, 64)]  # size, channels
FLAX, FAST = "flax", "fast"
PATHS = {
    FLAX: (lax.conv_general_dilated, nn.BatchNorm, None),
    FAST: (cpu_ops.conv_dwgemm, cpu_ops.BatchNorm, cpu_ops.COMPILER_OPTIONS),
    "flax, YNNPACK off": (lax.conv_general_dilated, nn.BatchNorm, cpu_ops.COMPILER_OPTIONS),
}


def conv_grads(conv, x, w, g, stride, options):
    def fn(x, w, g):
        y, vjp = jax.vjp(
            lambda a, b: conv(a, b, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=NHWC),
            x,
            w,
        )
        return vjp(g)[1]

    return np.asarray(jax.jit(fn, compiler_options=options)(x, w, g), np.float64)


def bn_outputs(bn, variables, x, g, options):
    def fn(x, params, g):
        def apply(x, params):
            v = {"params": params, "batch_stats": variables["batch_stats"]}
            return bn.apply(v, x, mutable=["batch_stats"])

        y, vjp, updates = jax.vjp(apply, x, params, has_aux=True)
        dx, dp = vjp(g)
        stats = updates["batch_stats"]
        return {"dx": dx, "dscale": dp["scale"], "dbias": dp["bias"], **stats}

    out = jax.jit(fn, compiler_options=options)(x, variables["params"], g)
    return {k: np.asarray(v, np.float64) for k, v in out.items()}


def in_units(err, abs_sum):
    r = np.abs(err) / (U * abs_sum)
    return f"{np.max(r):6.2f} / {np.median(r):5.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=128)
    b = p.parse_args().batch
    rng = np.random.default_rng(0)
    print(f"batch {b}; error / (u * sum|terms|), max / median over the outputs\n")
    print("| conv weight gradient | n | " + " | ".join(PATHS) + " | one float32 chain |")
    print("|---|---|" + "---|" * (len(PATHS) + 1))
    for size, cin, cout, s in CONVS:
        x = np.maximum(rng.standard_normal((b, size, size, cin)) + 0.3, 0).astype(np.float32)
        w = (rng.standard_normal((3, 3, cin, cout)) * np.sqrt(2 / (9 * cin))).astype(np.float32)
        o = (size - 1) // s + 1
        g = (rng.standard_normal((b, o, o, cout)) / (b * o * o)).astype(np.float32)
        with jax.enable_x64(True):
            f64 = lambda a: jnp.asarray(a, jnp.float64)
            exact = conv_grads(lax.conv_general_dilated, f64(x), f64(w), f64(g), s, None)
            abs_sum = conv_grads(
                lax.conv_general_dilated, f64(np.abs(x)), f64(np.abs(w)), f64(np.abs(g)), s, None
            )
        cells = [
            in_units(conv_grads(conv, x, w, g, s, opts) - exact, abs_sum)
            for conv, _, opts in PATHS.values()
        ]
        # The worst plausible order: one sequential float32 chain over all n terms (np.cumsum
        # accumulates sequentially), for the kernel tap (0, 0) and input channel 0.
        xs = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))[:, 0 : s * o : s, 0 : s * o : s, 0]
        terms = (xs[..., None] * g).reshape(-1, cout).astype(np.float32)
        chain = np.cumsum(terms, axis=0, dtype=np.float32)[-1].astype(np.float64)
        t64 = terms.astype(np.float64)
        cells.append(in_units(chain - t64.sum(0), np.abs(t64).sum(0)))
        shape = f"{size}x{size}x{cin} -> {cout}, stride {s}"
        print(f"| {shape} | {b * o * o} | " + " | ".join(cells) + " |")

    print("\n| BatchNorm, x ~ N(0.5, 1) | n | " + " | ".join(PATHS) + " |")
    print("|---|---|" + "---|" * len(PATHS))
    for size, c in NORMS:
        x = (rng.standard_normal((b, size, size, c)) + 0.5).astype(np.float32)
        g = (rng.standard_normal(x.shape) / x.size).astype(np.float32)
        variables = {
            "params": {"scale": jnp.ones(c), "bias": jnp.zeros(c)},
            "batch_stats": {"mean": jnp.zeros(c), "var": jnp.ones(c)},
        }
        kw = dict(use_running_average=False, momentum=0.0, epsilon=1e-5)
        with jax.enable_x64(True):
            v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
            exact = bn_outputs(
                nn.BatchNorm(**kw, dtype=jnp.float64),
                v64,
                jnp.asarray(x, jnp.float64),
                jnp.asarray(g, jnp.float64),
                None,
            )
        x64, g64 = x.astype(np.float64).reshape(-1, c), g.astype(np.float64).reshape(-1, c)
        n = x64.shape[0]
        mean = x64.mean(0)
        xhat = (x64 - mean) / np.sqrt(x64.var(0) + 1e-5)
        # sum|terms| of each: dscale = sum g xhat, dbias = sum g, batch mean = sum |x| / n,
        # batch variance = E[x^2] - E[x]^2 (its sums' scale: sum x^2 / n + mean^2). momentum=0
        # makes the new running statistics the batch's own.
        abs_sums = {
            "dscale": np.abs(g64 * xhat).sum(0),
            "dbias": np.abs(g64).sum(0),
            "mean": np.abs(x64).sum(0) / n,
            "var": (x64**2).sum(0) / n + mean**2,
        }
        cells = []
        for _, norm, opts in PATHS.values():
            got = bn_outputs(norm(**kw), variables, x, g, opts)
            parts = [
                f"{k} {np.max(np.abs(got[k] - exact[k]) / (U * a)):.1f}"
                for k, a in abs_sums.items()
            ]
            rel_dx = np.linalg.norm(got["dx"] - exact["dx"]) / np.linalg.norm(exact["dx"])
            cells.append(", ".join(parts) + f"; dx {rel_dx:.1e} rel.")
        print(f"| {size}x{size}x{c} | {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
