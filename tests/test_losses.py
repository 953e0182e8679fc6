"""Tests for ltkd_jax.losses: the methods.md 11 test vectors, gradients and invariances.

Test vectors run in float32 (rtol 1e-5; TV16 1e-4 as methods.md says). The vectors are printed
to 6 decimals, so an absolute tolerance of 1e-6 covers their rounding. Gradient checks
(`jax.test_util.check_grads`, order 2, forward and reverse) run in float64 inside
`jax.enable_x64`, which restores the flag afterwards, so other test modules stay in float32.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from ltkd_jax import losses
from ltkd_jax.data import longtail

# --- methods.md 11.0: shared inputs (C = 3, B = 2) -----------------------------------------
N = np.array([100, 20, 5])
Z = np.array([[2.0, 0.5, -1.0], [0.2, 1.5, 0.3]])
V = np.array([[3.0, 1.0, -2.0], [4.0, 0.8, 0.6]])
Y = np.array([0, 2])
W_TV = [0.115896, 0.577167, 2.306937]  # effective number, beta = 0.9999, sum = C
W = np.asarray(losses.effective_number_weights(N), np.float64)
COS = np.array([[0.5, 0.1, -0.2], [0.05, 0.3, 0.2]])  # TV4 cosine logits

# TV9 (CBD features)
F_S = np.array([[1.0, 2.0, 0.0, -1.0], [0.5, 0.5, 0.5, 0.5]])
T1 = np.array([[1.0, 1.0], [0.0, 2.0]])
T2 = np.array([[2.0, 0.0], [1.0, 1.0]])

# TV16 (LTKD, C = 6, B = 2, T = 4; groups head {0,1}, medium {2,3}, tail {4,5})
N6 = np.array([200, 100, 40, 20, 8, 4])
Z6 = np.array([[1.5, 0.3, -0.2, 0.8, -1.0, 0.1], [0.2, 1.1, 0.4, -0.3, 0.9, -0.5]])
V6 = np.array([[3.0, 1.2, 0.5, 0.9, -1.5, -0.4], [2.2, 1.8, 0.1, 0.6, 0.3, -1.2]])
Y6 = np.array([0, 4])
G6 = np.array([0, 0, 1, 1, 2, 2])

# TV17 (KRDistill-R features)
MU = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.2], [0.5, 0.5, 1.0]])
FT = np.array([[1.2, 0.1, 0.6], [0.9, 0.4, 0.3]])
GFS = np.array([[0.9, 0.2, 0.4], [0.3, 0.8, 0.6]])


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


def cifar_lt_counts(n_max: int, num_classes: int, imbalance: float) -> np.ndarray:
    """methods.md 2.1: n_c = int(n_max * (1/IF)^(c/(C-1)))."""
    c = np.arange(num_classes)
    return np.array([int(n_max * (1.0 / imbalance) ** (i / (num_classes - 1))) for i in c])


# --------------------------------------------------------------------------------------------
# Test vectors (methods.md 11)
# --------------------------------------------------------------------------------------------


def test_tv_effective_number_weights():
    assert_close(losses.effective_number_weights(N), W_TV)
    assert_close(jnp.sum(losses.effective_number_weights(N)), 3.0)
    assert_close(losses.effective_number_weights(N, beta=0.0), [1.0, 1.0, 1.0])


def test_tv1_cross_entropy():
    loss, parts = losses.cross_entropy(Z, labels=Y)
    assert_close(loss, 0.947379)
    assert_close(parts["ce"], 0.947379)
    for i, expected in enumerate([0.241311, 1.653446]):
        assert_close(losses.cross_entropy(Z[i : i + 1], labels=Y[i : i + 1])[0], expected)


def test_tv2_weighted_cross_entropy():
    loss, _ = losses.weighted_cross_entropy(Z, labels=Y, class_weights=W)
    assert_close(loss, 1.585897)
    # The wrong reduction mean(w_y l) = 1.921182 must not be what we compute.
    per_sample = np.array([0.241311, 1.653446])
    assert_close(np.mean(np.array(W_TV)[Y] * per_sample), 1.921182)
    assert abs(float(loss) - 1.921182) > 0.1


def test_tv3_focal():
    assert_close(losses.focal_loss(Z, labels=Y, gamma=1.0)[0], 0.694366)
    repo, _ = losses.focal_loss(Z, labels=Y, gamma=1.0, class_weights=W, ldam_repo_form=True)
    assert_close(repo, 1.865528)


def test_tv4_ldam():
    assert_close(losses.ldam_margins(N), [0.236435, 0.353553, 0.5])
    assert_close(losses.ldam_loss(COS, labels=Y, class_counts=N)[0], 9.003961)
    for i, expected in enumerate([0.007369, 18.000553]):
        single = losses.ldam_loss(COS[i : i + 1], labels=Y[i : i + 1], class_counts=N)[0]
        assert_close(single, expected)


def test_tv5_logit_adjustment():
    assert_close(losses.logit_adjusted_loss(Z, labels=Y, class_counts=N)[0], 1.761747)
    assert_close(losses.logit_adjusted_loss(Z, labels=Y, class_counts=N, tau=2.0)[0], 3.019915)
    adjusted = losses.posthoc_logit_adjust(Z, N)
    assert_close(adjusted, [[2.223144, 2.332581, 2.218876], [0.423144, 3.332581, 3.518876]])
    np.testing.assert_array_equal(jnp.argmax(adjusted, axis=-1), [1, 2])
    np.testing.assert_array_equal(jnp.argmax(Z, axis=-1), [0, 1])


def test_tv6_kd():
    loss, parts = losses.kd_loss(Z, labels=Y, teacher_logits=V, temperature=2.0, alpha=1.0)
    assert_close(parts["kd"], 1.059948)
    assert_close(loss, 2.007327)
    weighted, _ = losses.kd_loss(Z, labels=Y, teacher_logits=V, class_weights=W)
    assert_close(weighted, 2.645845)


def test_tv6_kd_gradient():
    # Gradient of T^2 KL_i w.r.t. z_i = T (p - q); the batch mean divides by B.
    def kd_part(z):
        return losses.kd_loss(z, labels=Y, teacher_logits=V, temperature=2.0)[1]["kd"]

    grad = jax.grad(kd_part)(jnp.asarray(Z, jnp.float32)) * Z.shape[0]
    expected = [[-0.199749, 0.049769, 0.149980], [-0.940298, 0.674148, 0.266150]]
    assert_close(grad, expected)


def test_tv7_bkd():
    loss, parts = losses.bkd_loss(Z, labels=Y, teacher_logits=V, class_weights=W)
    assert_close(parts["kd"], 1.297383)
    assert_close(loss, 2.244762)
    # The scale of w cancels in the renormalisation (methods.md 5.1).
    unnormalised, _ = losses.bkd_loss(Z, labels=Y, teacher_logits=V, class_weights=W * 7.3)
    assert_close(unnormalised, 2.244762)


def test_tv8_dkd():
    loss, parts = losses.dkd_loss(Z, labels=Y, teacher_logits=V, temperature=4.0)
    assert_close(parts["tckd"], 0.175064)
    assert_close(parts["nckd"], 1.318860)
    assert_close(parts["tckd"] + 8.0 * parts["nckd"], 10.725944)
    assert_close(loss, 11.673323)
    # Warm-up factor min(epoch / warmup, 1) on the distillation part only.
    half, _ = losses.dkd_loss(Z, labels=Y, teacher_logits=V, epoch=10, warmup=20)
    assert_close(half, 0.947379 + 0.5 * 10.725944)
    late, _ = losses.dkd_loss(Z, labels=Y, teacher_logits=V, epoch=35)
    assert_close(late, 11.673323)


def test_tv9_cbd():
    loss, parts = losses.cbd_loss(Z, labels=Y, features=F_S, teacher_features=(T1, T2))
    assert_close(parts["feature"], 0.267037)
    assert_close(loss, 11.249911)


def test_tv10_dukd():
    kw = dict(labels=Y, teacher_logits=V, class_counts=N, temperature=2.0)
    loss, parts = losses.dukd_loss(Z, lam=1.0, **kw)
    assert_close(parts["dukd"], 0.395967)
    assert_close(parts["tgls"], 1.761747)  # lam = 1: the LA-CE of TV5
    assert_close(loss, 2.157714)
    assert_close(losses.dukd_loss(Z, prior_placement="teacher", **kw)[1]["dukd"], 0.432998)
    assert_close(losses.dukd_loss(Z, prior_placement="outside", **kw)[1]["dukd"], 0.587927)


def test_tv11_tgls():
    kw = dict(labels=Y, teacher_logits=V, class_counts=N)
    tgls, _ = losses.tgls_loss(Z, lam=0.5, smoothing_temperature=1.0, **kw)
    assert_close(tgls, 1.164202)
    total, parts = losses.dukd_loss(Z, lam=0.5, alpha=1.0, temperature=2.0, **kw)
    assert_close(parts["tgls"], 1.164202)
    assert_close(total, 1.560170)


def test_tv12_krdistill_logits():
    r = losses.krdistill_rectify_logits(V, labels=Y, class_counts=N)
    assert_close(r, [[3.223144, 2.832581, 1.218876], [3.818876, 2.632581, 4.223144]])
    loss, parts = losses.krdistill_loss(
        Z, labels=Y, teacher_logits=V, class_counts=N, temperature=2.0
    )
    assert_close(parts["lrd"], 0.424930)
    assert_close(loss, 0.947379 + 0.424930)
    assert "rrd" not in parts


def test_tv13_tau_normalize():
    w_rows = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.5]])  # [C, D]; Flax kernels are [D, C]
    x = np.array([1.0, 2.0])
    for tau, expected in [(0.0, [11, 1, 1]), (0.5, [4.919350, 1, 1.414214]), (1.0, [2.2, 1, 2])]:
        assert_close(x @ losses.tau_normalize(w_rows.T, tau), expected)


def test_tv15_cifar_lt_weights():
    counts = cifar_lt_counts(5000, 10, 100)
    np.testing.assert_array_equal(counts, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
    expected = [0.0506, 0.0769, 0.1211, 0.1950, 0.3188, 0.5246, 0.8683, 1.4426, 2.4092, 3.9927]
    assert_close(losses.effective_number_weights(counts), expected, rtol=0, atol=5e-5)


def test_tv16_group_decomposition():
    d = losses.group_kl_decomposition(Z6, teacher_logits=V6, class_groups=G6, temperature=4.0)
    q = np.exp(d["log_teacher_mass"])
    assert_close(q, [[0.465697, 0.320436, 0.213867], [0.451810, 0.299305, 0.248884]])
    p = np.exp(d["log_student_mass"])
    assert_close(p, [[0.389097, 0.333757, 0.277146], [0.362297, 0.311056, 0.326648]])
    assert_close(d["cross_kl"], [0.015205, 0.020564], rtol=1e-4)
    within = [[0.002702, 0.002796, 0.0], [0.013184, 0.011234, 0.000076]]
    assert_close(d["within_kl"], within, rtol=1e-4)
    vanilla = d["cross_kl"] + jnp.sum(q * d["within_kl"], axis=-1)
    assert_close(vanilla, [0.017359, 0.029901], rtol=1e-4)


def test_tv16_ltkd():
    kw = dict(labels=Y6, teacher_logits=V6, class_counts=N6, class_groups=G6, temperature=4.0)
    loss, parts = losses.ltkd_loss(Z6, **kw)
    assert_close(parts["ce"], 1.095364)
    assert_close(parts["cross"], 0.166110, rtol=1e-4)
    assert_close(parts["within"], 0.239931, rtol=1e-4)
    assert_close(parts["cross"] + parts["within"], 0.406041, rtol=1e-4)
    assert_close(loss, 1.501406, rtol=1e-4)
    loss_r2, parts_r2 = losses.ltkd_loss(Z6, rebalance="r2", **kw)
    assert_close(parts_r2["cross"], 7.397823, rtol=1e-4)
    assert_close(loss_r2, 8.733118, rtol=1e-4)
    mean_w = losses.ltkd_loss(Z6, within_weighting="mean", **kw)[1]["within"]
    assert_close(mean_w, 0.079977, rtol=1e-4)
    # Ablations (distillation parts, no CE).
    only_within = losses.ltkd_loss(Z6, rebalance="none", **kw)[1]
    assert_close(only_within["cross"] + only_within["within"], 0.526079, rtol=1e-4)
    only_cross = losses.ltkd_loss(Z6, within_weighting="teacher", **kw)[1]
    assert_close(only_cross["cross"] + only_cross["within"], 0.258046, rtol=1e-4)
    # Vanilla recovered: CE + KD = 1.473449.
    vanilla, parts_v = losses.ltkd_loss(Z6, rebalance="none", within_weighting="teacher", **kw)
    assert_close(parts_v["cross"], 0.286148, rtol=1e-4)
    assert_close(parts_v["within"], 0.091936, rtol=1e-4)
    assert_close(vanilla, 1.473449, rtol=1e-4)


def test_tv16_rebalanced_targets():
    kw = dict(class_groups=G6, class_counts=N6, temperature=4.0)
    r1 = np.exp(losses.rebalanced_group_log_masses(V6, rebalance="r1", **kw))
    assert_close(r1, [[0.321255, 0.338445, 0.340300], [0.310795, 0.310878, 0.378327]])
    r2 = np.exp(losses.rebalanced_group_log_masses(V6, rebalance="r2", **kw))
    assert_close(r2, [[0.062808, 0.216086, 0.721106], [0.055298, 0.183163, 0.761539]])


def test_batch_rebalancing_by_hand():
    # Three classes, one per group, T = 1: the teacher's group masses are its softmax.
    q = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])  # head-heavy: batch masses 1.2, 0.5, 0.3
    scale = (2.0 / 3.0) / q.sum(0)  # each batch mass moved to the uniform 2/3
    expected = q * scale / (q * scale).sum(1, keepdims=True)
    got = losses.batch_rebalanced_group_log_masses(
        np.log(q), class_groups=np.array([0, 1, 2]), temperature=1.0
    )
    assert_close(np.exp(got), expected)
    # Same through the generic entry point; and the batch masses move toward uniform.
    via = losses.rebalanced_group_log_masses(
        np.log(q), class_groups=np.array([0, 1, 2]), temperature=1.0, rebalance="batch"
    )
    assert_close(np.exp(via), expected)
    before = np.abs(q.mean(0) - 1 / 3).max()
    after = np.abs(np.exp(got).mean(0) - 1 / 3).max()
    assert after < 0.5 * before


def test_batch_rebalancing_identical_rows_become_uniform():
    v = np.tile(V6[:1], (4, 1))  # a head-heavy teacher, the same row four times
    q = np.exp(losses.rebalanced_group_log_masses(V6[:1], class_groups=G6, rebalance="none"))
    assert q[0, 0] > 0.4  # head-heavy indeed
    qt = np.exp(losses.batch_rebalanced_group_log_masses(v, class_groups=G6))
    assert_close(qt, np.full((4, 3), 1 / 3))


def test_batch_rebalancing_keeps_empty_groups_empty():
    qt = np.exp(
        losses.batch_rebalanced_group_log_masses(
            V6, class_groups=np.array([0, 0, 1, 1, 1, 3]), num_groups=4
        )
    )
    assert_close(qt[:, 2], [0.0, 0.0])
    assert_close(qt.sum(1), [1.0, 1.0])


def test_tv16_ltkd_gradients():
    kw = dict(labels=Y6, teacher_logits=V6, class_counts=N6, class_groups=G6, temperature=4.0)

    @jax.jit
    def grads(z):
        return {
            k: jax.grad(lambda x, k=k: losses.ltkd_loss(x, **kw)[1][k])(z)
            for k in ("within", "cross")
        }

    g = grads(jnp.asarray(Z6, jnp.float32))
    expected_within = [
        [-0.072393, 0.072393, -0.074395, 0.074395, 0, 0],
        [-0.161986, 0.161986, 0.149696, -0.149696, -0.012098, 0.012098],
    ]
    assert_close(g["within"], expected_within, rtol=1e-4)
    expected_cross = [
        [0.077942, 0.057741, -0.004105, -0.005271, -0.054524, -0.071783],
        [0.045732, 0.057271, 0.000192, 0.000162, -0.060631, -0.042726],
    ]
    assert_close(g["cross"], expected_cross, rtol=1e-4)


def test_tv17_krdistill_features():
    rectified = losses.krdistill_rectify_features(FT, class_feature_means=MU, class_counts=N)
    assert_close(rectified, [[0.88, 0.42, 0.694667], [0.58, 0.72, 0.394667]])
    kw = dict(
        labels=Y,
        teacher_logits=V,
        class_counts=N,
        teacher_features=FT,
        class_feature_means=MU,
        temperature=2.0,
        beta=1.0,
    )
    loss, parts = losses.krdistill_loss(Z, features=GFS, **kw)
    assert_close(parts["rrd"], 0.131295)
    assert_close(parts["lrd"], 0.424930)
    assert_close(loss, 0.947379 + 0.424930 + 0.131295)
    grad = jax.grad(lambda f: losses.krdistill_loss(Z, features=f, **kw)[1]["rrd"])(
        jnp.asarray(GFS, jnp.float32)
    )
    assert_close(grad, [[0.02, -0.22, -0.294667], [-0.28, 0.08, 0.205333]])


# --------------------------------------------------------------------------------------------
# Every loss: one table of cases, shared properties
# --------------------------------------------------------------------------------------------

PER_EXAMPLE = ("logits", "labels", "teacher_logits", "features", "teacher_features")
STUDENT = ("logits", "features")
TEACHER = ("teacher_logits", "teacher_features", "class_feature_means")


@dataclasses.dataclass(frozen=True)
class Case:
    fn: Callable[..., Any]
    arrays: dict[str, Any]  # numpy inputs (traced under jit / vmap)
    static: dict[str, Any] = dataclasses.field(default_factory=dict)  # Python options
    # Gradient-check the jit-compiled loss: group losses (DKD, LTKD) compile faster as one
    # program than as the many small programs of eager mode; the others share eager programs.
    jit_grad_check: bool = False


C3 = dict(logits=Z, labels=Y)
KD3 = dict(logits=Z, labels=Y, teacher_logits=V)
LT6 = dict(logits=Z6, labels=Y6, teacher_logits=V6, class_counts=N6, class_groups=G6)
KR_FEATURES = dict(features=GFS, teacher_features=FT, class_feature_means=MU)

# One case per public loss, plus the option branches most likely to break.
CASES: dict[str, Case] = {
    "ce": Case(losses.cross_entropy, C3),
    "weighted_ce": Case(losses.weighted_cross_entropy, {**C3, "class_weights": W}),
    "focal": Case(losses.focal_loss, C3, {"gamma": 2.0}),
    "focal_repo": Case(losses.focal_loss, {**C3, "class_weights": W}, {"ldam_repo_form": True}),
    "ldam_drw": Case(losses.ldam_loss, dict(logits=COS, labels=Y, class_counts=N, class_weights=W)),
    "logit_adjusted": Case(losses.logit_adjusted_loss, {**C3, "class_counts": N}),
    "kd": Case(losses.kd_loss, KD3),
    "dkd": Case(losses.dkd_loss, {**KD3, "epoch": np.array(10)}, jit_grad_check=True),
    "bkd": Case(losses.bkd_loss, {**KD3, "class_weights": W}),
    "tgls": Case(losses.tgls_loss, {**KD3, "class_counts": N}),
    "dukd": Case(losses.dukd_loss, {**KD3, "class_counts": N}),
    "krdistill": Case(
        losses.krdistill_loss, {**KD3, "class_counts": N, **KR_FEATURES}, {"beta": 1.0}
    ),
    "cbd": Case(losses.cbd_loss, {**C3, "features": F_S, "teacher_features": (T1, T2)}),
    "ltkd": Case(losses.ltkd_loss, LT6, jit_grad_check=True),
    "ltkd_batch": Case(losses.ltkd_loss, LT6, {"rebalance": "batch"}, jit_grad_check=True),
    # The batch rule with an empty group (it must keep mass 0) and a group of size 1.
    "ltkd_batch_odd_groups": Case(
        losses.ltkd_loss,
        {**LT6, "class_groups": np.array([0, 0, 1, 1, 1, 3])},
        {"num_groups": 4, "rebalance": "batch"},
        jit_grad_check=True,
    ),
    # R2 with "mean" weights on four groups, one empty and one of size 1.
    "ltkd_r2_odd_groups": Case(
        losses.ltkd_loss,
        {**LT6, "class_groups": np.array([0, 0, 1, 1, 1, 3])},
        {"num_groups": 4, "rebalance": "r2", "within_weighting": "mean"},
        jit_grad_check=True,
    ),
}
CASE_NAMES = sorted(CASES)


def _tree_cast(tree, dtype):
    """Float leaves to ``dtype``; integer leaves unchanged."""

    def cast(x):
        x = np.asarray(x)
        return jnp.asarray(x, dtype) if np.issubdtype(x.dtype, np.floating) else jnp.asarray(x)

    return jax.tree.map(cast, tree)


def _call(case: Case, arrays: dict[str, Any]):
    kwargs = {k: v for k, v in arrays.items() if k != "logits"}
    return case.fn(arrays["logits"], **kwargs, **case.static)


def _map_examples(fn: Callable[[Any], Any], arrays: dict[str, Any]) -> dict[str, Any]:
    """Apply ``fn`` to every per-example leaf (batch axis first); class-level inputs unchanged."""
    return {k: jax.tree.map(fn, v) if k in PER_EXAMPLE else v for k, v in arrays.items()}


def _extreme(case: Case) -> dict[str, Any]:
    """Logits of +-1e4, teacher disagreeing, classes with a count of 1, a zero feature row."""
    arrays = dict(case.arrays)
    num_classes = arrays["logits"].shape[-1]
    row = np.resize([1e4, -1e4, 0.0, 1e4, -1e4, 3.0], num_classes)
    arrays["logits"] = np.stack([row, np.roll(row, 1)])
    if "teacher_logits" in arrays:
        arrays["teacher_logits"] = -arrays["logits"]
    if "class_counts" in arrays:
        counts = np.resize([1000, 1, 1], num_classes)
        arrays["class_counts"] = counts
        if "class_weights" in arrays:
            arrays["class_weights"] = np.asarray(losses.effective_number_weights(counts))
    if "features" in arrays:
        arrays["features"] = arrays["features"] * np.array([[1e4], [0.0]])
    return arrays


@functools.cache
def _outputs(name: str) -> dict[str, Any]:
    """Everything the per-case property tests read, from one eager call and ONE jit-compiled
    program per case (XLA compiles dominate this file's runtime on CPU, and each extra copy of
    the loss in the program costs compile time, so each property adds one copy at most).

    In the program: the loss; under ``vmap``, the batch and the batch in reverse order (a
    permutation, so both must give the loss); the batch doubled; the gradient w.r.t. the
    teacher inputs; loss and student gradient at extreme inputs; the loss on bf16 inputs.
    """
    case = CASES[name]
    base = _tree_cast(case.arrays, jnp.float32)
    extreme = _tree_cast(_extreme(case), jnp.float32)
    low = _tree_cast(case.arrays, jnp.bfloat16)

    def run(base, extreme, low):
        call = functools.partial(_call, case)
        stacked = {
            k: jax.tree.map(lambda x: jnp.stack([x, x[::-1]]), base[k])
            for k in PER_EXAMPLE
            if k in base
        }
        shared = {k: v for k, v in base.items() if k not in PER_EXAMPLE}
        teacher = {k: base[k] for k in TEACHER if k in base}
        student = {k: extreme[k] for k in STUDENT if k in extreme}
        return {
            "loss": call(base),
            "vmapped": jax.vmap(lambda s: call({**s, **shared}))(stacked),
            "doubled": call(_map_examples(lambda x: jnp.concatenate([x, x]), base))[0],
            "teacher_grads": jax.grad(lambda t: call({**base, **t})[0])(teacher),
            "extreme": jax.value_and_grad(lambda s: call({**extreme, **s}), has_aux=True)(student),
            "bf16": call(low),
        }

    # Eager references; the second re-uses the first's op-by-op programs (same shapes, dtypes).
    upcast = jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x, low)
    return {
        "eager": _call(case, base),
        "bf16_in_float32": _call(case, upcast)[0],
        **jax.jit(run)(base, extreme, low),
    }


@pytest.mark.parametrize("name", CASE_NAMES)
def test_scalar_float32_and_finite(name):
    loss, parts = _outputs(name)["loss"]
    assert loss.shape == () and loss.dtype == jnp.float32
    assert parts and all(p.shape == () and p.dtype == jnp.float32 for p in parts.values())
    assert np.isfinite(loss) and all(np.isfinite(p) for p in parts.values())


@pytest.fixture
def fast_compiles():
    """Skip most XLA optimisations while checking gradients: the check compiles a dozen small
    float64 programs, and their compile time, not their run time, is what costs. Restored after."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)


@pytest.mark.parametrize("name", CASE_NAMES)
@pytest.mark.slow
def test_check_grads_float64(name, fast_compiles):
    case = CASES[name]
    with jax.enable_x64(True):
        arrays = _tree_cast(case.arrays, jnp.float64)
        student = {k: arrays[k] for k in STUDENT if k in arrays}

        def f(*xs):
            return _call(case, {**arrays, **dict(zip(student, xs, strict=True))})[0]

        if case.jit_grad_check:
            f = jax.jit(f)
        assert f(*student.values()).dtype == jnp.float64
        check_grads(f, tuple(student.values()), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "name", [n for n in CASE_NAMES if any(k in CASES[n].arrays for k in TEACHER)]
)
def test_zero_gradient_to_teacher(name):
    grads = jax.tree.leaves(_outputs(name)["teacher_grads"])
    assert grads
    for g in grads:
        np.testing.assert_array_equal(g, np.zeros_like(g))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_jit_and_vmap_match_eager(name):
    out = _outputs(name)
    jax.tree.map(lambda a, b: assert_close(a, b, rtol=1e-6, atol=1e-7), out["eager"], out["loss"])
    for i in (0, 1):  # The batch, then the same batch in reverse order.
        jax.tree.map(
            lambda a, b, i=i: assert_close(a[i], b, rtol=1e-6, atol=1e-7),
            out["vmapped"],
            out["loss"],
        )


@pytest.mark.parametrize("name", CASE_NAMES)
def test_batch_mean_invariance(name):
    out = _outputs(name)
    assert_close(out["doubled"], out["loss"][0], rtol=1e-6)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_finite_for_extreme_logits(name):
    (loss, parts), grads = _outputs(name)["extreme"]
    for x in [loss, *parts.values(), *jax.tree.leaves(grads)]:
        assert np.all(np.isfinite(x)), (name, x)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bfloat16_inputs_accumulate_in_float32(name):
    out = _outputs(name)
    loss, parts = out["bf16"]
    assert loss.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in parts.values())
    assert_close(loss, out["bf16_in_float32"], rtol=1e-6)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_rejects_unknown_keyword(name):
    case = CASES[name]
    with pytest.raises(TypeError):
        _call(case, {**case.arrays, "not_an_argument": 1.0})


def test_calling_convention():
    """Student logits positional first; everything else keyword-only; shared names."""
    for name, fn in losses.LOSSES.items():
        params = list(inspect.signature(fn).parameters.values())
        assert params[0].name == "logits", name
        assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, name
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), name
        assert params[1].name == "labels", name
        assert inspect.getdoc(fn), name
    for fn in [losses.tgls_loss, losses.dukd_loss, losses.krdistill_loss, losses.ltkd_loss]:
        assert "RECONSTRUCTION" in inspect.getdoc(fn)
    assert losses.get_loss("bkd") is losses.bkd_loss
    with pytest.raises(KeyError, match="known"):
        losses.get_loss("nope")


# --------------------------------------------------------------------------------------------
# Method properties
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_kd_and_bkd_zero_kl_when_student_equals_teacher(temperature):
    kw = dict(labels=Y, teacher_logits=V, temperature=temperature)
    assert float(losses.kd_loss(V, **kw)[1]["kd"]) == pytest.approx(0.0, abs=1e-7)
    for uniform in (np.ones(3), np.full(3, 3.7)):
        # log w shifts every teacher logit equally; float32 rounding of that shift is the only
        # residual, so compare the KL itself (kd / T^2).
        bkd = losses.bkd_loss(V, class_weights=uniform, **kw)[1]["kd"]
        assert float(bkd) / temperature**2 == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_bkd_with_uniform_weights_equals_kd(temperature):
    kw = dict(labels=Y, teacher_logits=V, temperature=temperature, alpha=0.7)
    kd, _ = losses.kd_loss(Z, **kw)
    for uniform in (np.ones(3), np.full(3, 0.25)):
        assert_close(losses.bkd_loss(Z, class_weights=uniform, **kw)[0], kd, rtol=1e-6)


def test_bkd_fixed_point():
    """KL = 0 at z = v + T log w + const (methods.md 5.1)."""
    z = V + 2.0 * np.log(W) + 1.5
    kd = losses.bkd_loss(z, labels=Y, teacher_logits=V, class_weights=W, temperature=2.0)[1]
    assert float(kd["kd"]) == pytest.approx(0.0, abs=1e-6)


def test_ltkd_decomposition_identity_float64():
    """KL(q||p) = KL(Q||P) + sum_k Q_k KL(qh^k||ph^k), methods.md 7A.2, with odd groups."""
    rng = np.random.default_rng(0)
    z, v = 3.0 * rng.normal(size=(5, 7)), 3.0 * rng.normal(size=(5, 7))
    labels = np.zeros(5, int)
    groups = np.array([0, 0, 1, 1, 1, 3, 0])  # group 2 empty, group 3 of size 1
    common = dict(teacher_logits=v, class_groups=groups, num_groups=4)

    @jax.jit
    def terms(temperature):
        d = losses.group_kl_decomposition(z, temperature=temperature, **common)
        kd = losses.kd_loss(z, labels=labels, teacher_logits=v, temperature=temperature)[1]
        ltkd = losses.ltkd_loss(
            z,
            labels=labels,
            temperature=temperature,
            rebalance="none",
            within_weighting="teacher",
            **common,
        )[1]
        return d, kd["kd"], ltkd["cross"] + ltkd["within"]

    with jax.enable_x64(True):
        for temperature in (1.0, 4.0):
            d, kd, ltkd = terms(jnp.float64(temperature))
            q = jnp.exp(d["log_teacher_mass"])
            per_sample = d["cross_kl"] + jnp.sum(q * d["within_kl"], axis=-1)
            assert_close(temperature**2 * jnp.mean(per_sample), kd, rtol=1e-12, atol=1e-14)
            assert_close(ltkd, kd, rtol=1e-12, atol=1e-14)
            assert_close(d["within_kl"][:, 2:], 0.0, rtol=0, atol=1e-15)  # empty and size-1
            assert_close(q[:, 2], 0.0, rtol=0, atol=1e-300)


def test_ltkd_default_groups_are_shot_groups():
    kw = dict(labels=Y6, teacher_logits=V6, class_counts=N6)
    default, _ = losses.ltkd_loss(Z6, **kw)
    explicit, _ = losses.ltkd_loss(Z6, class_groups=longtail.shot_groups(N6), **kw)
    assert_close(default, explicit, rtol=0, atol=0)
    with pytest.raises(ValueError, match="class_counts"):
        losses.ltkd_loss(Z6, labels=Y6, teacher_logits=V6, class_groups=G6)


def test_dkd_tckd_is_binary_kl_and_traced_epoch():
    """TCKD = T^2 KL([q_g, 1-q_g] || [p_g, 1-p_g]), computed naively; epoch may be traced."""
    t = 4.0
    p, q = jax.nn.softmax(Z / t), jax.nn.softmax(V / t)
    pg, qg = p[np.arange(2), Y], q[np.arange(2), Y]
    naive = qg * np.log(qg / pg) + (1 - qg) * np.log((1 - qg) / (1 - pg))
    _, parts = losses.dkd_loss(Z, labels=Y, teacher_logits=V, temperature=t)
    assert_close(parts["tckd"], t**2 * np.mean(naive))
    step = jax.jit(lambda e: losses.dkd_loss(Z, labels=Y, teacher_logits=V, epoch=e)[0])
    assert_close(step(jnp.asarray(5)), 0.947379 + 0.25 * 10.725944)
    assert_close(step(jnp.asarray(40)), 11.673323)


def test_reductions_to_cross_entropy():
    ce, _ = losses.cross_entropy(Z, labels=Y)
    uniform = np.array([7, 7, 7])
    assert_close(losses.logit_adjusted_loss(Z, labels=Y, class_counts=uniform)[0], ce)
    assert_close(losses.focal_loss(Z, labels=Y, gamma=0.0)[0], ce)
    assert_close(losses.weighted_cross_entropy(Z, labels=Y, class_weights=np.ones(3))[0], ce)
    assert_close(losses.ldam_loss(Z, labels=Y, class_counts=N, max_margin=0.0, scale=1.0)[0], ce)
    la, _ = losses.logit_adjusted_loss(Z, labels=Y, class_counts=N)
    kw = dict(labels=Y, teacher_logits=V, class_counts=N)
    assert_close(losses.tgls_loss(Z, lam=1.0, **kw)[0], la)
    assert_close(losses.dukd_loss(Z, lam=1.0, alpha=0.0, **kw)[0], la)
    # Without weights the LDAM-repo focal form is the true focal loss.
    assert_close(
        losses.focal_loss(Z, labels=Y, ldam_repo_form=True)[0], losses.focal_loss(Z, labels=Y)[0]
    )


def test_cbd_any_number_of_teachers():
    one = losses.cbd_loss(Z, labels=Y, features=F_S[:, :2], teacher_features=T1)[0]
    assert_close(one, losses.cbd_loss(Z, labels=Y, features=F_S[:, :2], teacher_features=[T1])[0])
    t3 = np.array([[0.0, 1.0, 1.0], [3.0, -1.0, 0.5]])
    f6 = np.concatenate([F_S, F_S[:, :3]], axis=-1)[:, :7]
    three, parts = losses.cbd_loss(Z, labels=Y, features=f6, teacher_features=(T1, T2, t3))
    assert np.isfinite(three) and 0.0 <= float(parts["feature"]) <= 2.0
    # Each teacher is normalised on its own: rescaling one teacher changes nothing.
    scaled = losses.cbd_loss(Z, labels=Y, features=f6, teacher_features=(10 * T1, T2, 0.1 * t3))
    assert_close(scaled[0], three, rtol=1e-6)
    with pytest.raises(ValueError, match="width"):
        losses.cbd_loss(Z, labels=Y, features=F_S, teacher_features=(T1,))


def test_krdistill_options():
    kw = dict(labels=Y, teacher_logits=V, class_counts=N)
    with pytest.raises(ValueError, match="beta"):
        losses.krdistill_loss(Z, beta=1.0, **kw)
    # The swap only touches samples whose rectified argmax is wrong (sample 2 of TV12).
    no_swap = losses.krdistill_rectify_logits(V, labels=Y, class_counts=N, swap=False)
    swapped = losses.krdistill_rectify_logits(V, labels=Y, class_counts=N)
    assert_close(swapped[0], no_swap[0], rtol=0, atol=0)
    assert int(jnp.argmax(swapped[1])) == Y[1]


def test_class_weight_helpers():
    counts = cifar_lt_counts(500, 100, 100)
    assert counts.sum() == 10847
    w = losses.effective_number_weights(counts)
    assert_close(jnp.sum(w), 100.0)
    assert_close(w[0], 0.045, rtol=0, atol=5e-4)
    assert_close(w[-1], 4.38, rtol=0, atol=5e-3)
    # DRW switch with a traced epoch.
    drw = jax.jit(lambda e: losses.drw_class_weights(N, e))
    assert_close(drw(jnp.asarray(159)), [1.0, 1.0, 1.0])
    assert_close(drw(jnp.asarray(160)), W_TV)
    # A traced beta gives the same weights; beta = 0 gives ones.
    assert_close(jax.jit(losses.effective_number_weights)(N, jnp.float32(0.9999)), W_TV, rtol=2e-4)
    assert_close(jax.jit(losses.effective_number_weights)(N, jnp.float32(0.0)), [1, 1, 1])
    inv = losses.inverse_frequency_weights(N)
    assert_close(inv, 3 * (1 / N) / np.sum(1 / N))
    assert_close(losses.class_prior(N), [0.8, 0.16, 0.04])


def test_groups():
    np.testing.assert_array_equal(
        longtail.shot_groups(np.array([101, 100, 20, 19, 1])), [0, 1, 1, 2, 2]
    )
    counts = cifar_lt_counts(500, 100, 100)
    assert np.bincount(np.asarray(longtail.shot_groups(counts)), minlength=3).tolist() == [
        35,
        35,
        30,
    ]
    assert np.bincount(np.asarray(losses.thirds_groups(counts)), minlength=3).tolist() == [
        33,
        33,
        34,
    ]
    np.testing.assert_array_equal(losses.thirds_groups(np.array([5, 50, 500])), [2, 1, 0])
    np.testing.assert_array_equal(longtail.shot_groups(N6), [0, 1, 1, 1, 2, 2])


def test_invalid_options():
    kw = dict(labels=Y6, teacher_logits=V6, class_counts=N6)
    with pytest.raises(ValueError, match="rebalance"):
        losses.ltkd_loss(Z6, rebalance="r3", **kw)
    with pytest.raises(ValueError, match="within_weighting"):
        losses.ltkd_loss(Z6, within_weighting="x", **kw)
    with pytest.raises(ValueError, match="prior_placement"):
        losses.dukd_loss(Z, labels=Y, teacher_logits=V, class_counts=N, prior_placement="x")
    with pytest.raises(ValueError, match="shape"):
        losses.cross_entropy(Z[0], labels=Y)
