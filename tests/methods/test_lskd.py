"""lskd: KD on z-scored logits (ltkd_jax/methods/lskd.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from ltkd_jax import config_lib, methods
from ltkd_jax.methods.lskd import lskd_loss, standardize

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
    base, _ = lskd_loss(Z, labels=Y, teacher_logits=V)
    moved, _ = lskd_loss(Z, labels=Y, teacher_logits=3.0 * V - 7.0)
    np.testing.assert_allclose(moved, base, rtol=1e-5)
    _, parts = lskd_loss(Z, labels=Y, teacher_logits=V)
    _, scaled = lskd_loss(2.0 * Z + 1.0, labels=Y, teacher_logits=V)
    np.testing.assert_allclose(scaled["kd"], parts["kd"], rtol=1e-5)


def test_standardized_rows_have_zero_mean_and_unit_std():
    s = np.asarray(standardize(jnp.asarray(V)))
    np.testing.assert_allclose(s.mean(-1), 0.0, atol=1e-6)
    np.testing.assert_allclose(s.std(-1, ddof=1), 1.0, rtol=1e-5)


@pytest.mark.slow
def test_gradients_float64():
    with jax.enable_x64(True):
        z, v = jnp.asarray(Z, jnp.float64), jnp.asarray(V, jnp.float64)
        check_grads(
            lambda z: lskd_loss(z, labels=Y, teacher_logits=v)[0], (z,), order=2, modes=["rev"]
        )


def test_registered_with_its_config_and_checks():
    config = config_lib.base_config("lskd")
    assert config.loss.to_dict() == {"alpha": 9.0, "ce_weight": 0.1, "temperature": 2.0}
    assert methods.num_teachers(config) == 1
    config.loss.temperature = -1.0
    with pytest.raises(ValueError, match=r"config.loss.temperature=-1.0 must be > 0"):
        config_lib.validate_config(config)


def test_the_method_calls_the_loss_with_its_config():
    config = config_lib.base_config("lskd")
    config.loss.alpha = 2.0
    task = methods.Task(class_counts=np.array([9, 5, 3, 2, 1]), class_groups=np.zeros(5, int))
    method = methods.make(config, task)
    out = methods.ModelOutput(Z, np.zeros((4, 2), np.float32))
    teacher = methods.ModelOutput(V, np.zeros((4, 2), np.float32))
    loss, _ = method.loss(out, Y, (teacher,), method.epoch_context(0))
    np.testing.assert_allclose(loss, reference(Z, V, Y, alpha=2.0), rtol=1e-5)
