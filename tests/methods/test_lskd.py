"""ltkd_jax/methods/lskd.py: KD on z-scored logits."""

import jax.numpy as jnp
import numpy as np

from ltkd_jax.methods import lskd
from ltkd_jax.methods.lskd import lskd_loss, standardize

from .properties import Case, DistillationProperties, SpecChecks
from .vectors import V as V3
from .vectors import Y as Y3
from .vectors import Z as Z3

RNG = np.random.default_rng(0)
Z = RNG.normal(size=(4, 5)).astype(np.float32) * 3
V = RNG.normal(size=(4, 5)).astype(np.float32) * 5 + 1
Y = np.array([0, 1, 4, 2])


def reference(z, v, y, temperature=2.0, alpha=9.0, ce_weight=0.1):
    """The official code's arithmetic in float64 numpy (torch.std is unbiased)."""
    z, v = z.astype(np.float64), v.astype(np.float64)

    def norm(x):
        return (x - x.mean(-1, keepdims=True)) / (1e-7 + x.std(-1, ddof=1, keepdims=True))

    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    ce = -log_softmax(z)[np.arange(len(y)), y].mean()
    log_p, log_q = log_softmax(norm(z) / temperature), log_softmax(norm(v) / temperature)
    kd = (np.exp(log_q) * (log_q - log_p)).sum(-1).mean() * temperature**2
    return ce_weight * ce + alpha * kd


def test_matches_the_official_arithmetic():
    loss, parts = lskd_loss(Z, labels=Y, teacher_logits=V)
    # float32 sums of 5 terms of size O(10): a few ulps relative.
    np.testing.assert_allclose(loss, reference(Z, V, Y), rtol=1e-5)
    np.testing.assert_allclose(loss, 0.1 * parts["ce"] + 9.0 * parts["kd"], rtol=1e-6)


def test_invariant_to_shifting_and_scaling_either_side():
    base, parts = lskd_loss(Z, labels=Y, teacher_logits=V)
    moved, _ = lskd_loss(Z, labels=Y, teacher_logits=3.0 * V - 7.0)
    np.testing.assert_allclose(moved, base, rtol=1e-5)
    _, scaled = lskd_loss(2.0 * Z + 1.0, labels=Y, teacher_logits=V)
    np.testing.assert_allclose(scaled["kd"], parts["kd"], rtol=1e-5)


def test_standardized_rows_have_zero_mean_and_unit_std():
    s = np.asarray(standardize(jnp.asarray(V)))
    np.testing.assert_allclose(s.mean(-1), 0.0, atol=1e-6)
    np.testing.assert_allclose(s.std(-1, ddof=1), 1.0, rtol=1e-5)


# Shared checks (tests/methods/properties.py): check_grads, jit/vmap, bf16, extreme logits,
# no gradient to the teacher; the registry entry, its defaults, checks and `make`.
class TestLosses(DistillationProperties):
    cases = {"lskd": Case(lskd_loss, dict(logits=Z3, labels=Y3, teacher_logits=V3))}


class TestSpec(SpecChecks):
    name, module, loss_fn = "lskd", lskd, lskd_loss
    shared_fields = frozenset({"temperature", "alpha", "ce_weight"})
    bad_values = {"temperature": 0.0, "alpha": -1.0, "ce_weight": -0.1}
    overrides = {"temperature": 3.0, "alpha": 2.0, "ce_weight": 0.5}

    def expected(self, c, task, student, labels, teachers, epoch):
        return lskd_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            temperature=c.temperature,
            alpha=c.alpha,
            ce_weight=c.ce_weight,
        )
