"""ltkd_jax/methods/primitives.py: class weights and priors, KL helpers, group masses,
tau-normalisation and post-hoc logit adjustment."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ltkd_jax.methods import posthoc
from ltkd_jax.methods import primitives as P

from .vectors import W_TV, N, Z, assert_close, cifar_lt_counts

# A classifier of three classes on two features: rows are classes; Flax kernels are [D, C].
W_ROWS = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.5]])
TAU_NORM_LOGITS = [(0.0, [11, 1, 1]), (0.5, [4.919350, 1, 1.414214]), (1.0, [2.2, 1, 2])]


def test_tv_effective_number_weights():
    assert_close(P.effective_number_weights(N), W_TV)
    assert_close(jnp.sum(P.effective_number_weights(N)), 3.0)
    assert_close(P.effective_number_weights(N, beta=0.0), [1.0, 1.0, 1.0])


def test_tv15_cifar_lt_weights():
    counts = cifar_lt_counts(5000, 10, 100)
    np.testing.assert_array_equal(counts, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
    expected = [0.0506, 0.0769, 0.1211, 0.1950, 0.3188, 0.5246, 0.8683, 1.4426, 2.4092, 3.9927]
    assert_close(P.effective_number_weights(counts), expected, rtol=0, atol=5e-5)


def test_class_weight_helpers():
    counts = cifar_lt_counts(500, 100, 100)
    assert counts.sum() == 10847
    w = P.effective_number_weights(counts)
    assert_close(jnp.sum(w), 100.0)
    assert_close(w[0], 0.045, rtol=0, atol=5e-4)
    assert_close(w[-1], 4.38, rtol=0, atol=5e-3)
    # DRW switch with a traced epoch.
    drw = jax.jit(lambda e: P.drw_class_weights(N, e))
    assert_close(drw(jnp.asarray(159)), [1.0, 1.0, 1.0])
    assert_close(drw(jnp.asarray(160)), W_TV)
    # A traced beta gives the same weights; beta = 0 gives ones.
    assert_close(jax.jit(P.effective_number_weights)(N, jnp.float32(0.9999)), W_TV, rtol=2e-4)
    assert_close(jax.jit(P.effective_number_weights)(N, jnp.float32(0.0)), [1, 1, 1])
    inv = P.inverse_frequency_weights(N)
    assert_close(inv, 3 * (1 / N) / np.sum(1 / N))
    assert_close(P.class_prior(N), [0.8, 0.16, 0.04])


def test_tv5_posthoc_logit_adjust():
    adjusted = P.posthoc_logit_adjust(Z, N)
    assert_close(adjusted, [[2.223144, 2.332581, 2.218876], [0.423144, 3.332581, 3.518876]])
    np.testing.assert_array_equal(jnp.argmax(adjusted, axis=-1), [1, 2])
    np.testing.assert_array_equal(jnp.argmax(Z, axis=-1), [0, 1])


def test_tv13_tau_normalize():
    x = np.array([1.0, 2.0])
    for tau, expected in TAU_NORM_LOGITS:
        assert_close(x @ P.tau_normalize(W_ROWS.T, tau), expected)


def test_tau_normalisation_of_the_classifier_drops_the_bias():
    """The post-hoc correction applies `tau_normalize` to a run's classifier."""
    variables = {"params": {"classifier": {"kernel": W_ROWS.T, "bias": np.ones(3)}}}
    for tau, expected in TAU_NORM_LOGITS:
        out = posthoc.tau_normalized_variables(variables, tau)["params"]["classifier"]
        np.testing.assert_allclose(np.array([1.0, 2.0]) @ out["kernel"], expected, rtol=1e-5)
        np.testing.assert_array_equal(out["bias"], 0)


def test_kl_with_log_targets_and_its_mask():
    q, p = np.array([[0.5, 0.3, 0.2]]), np.array([[0.2, 0.2, 0.6]])
    by_hand = np.sum(q * np.log(q / p), axis=-1)
    assert_close(P.kl_with_log_targets(np.log(q), np.log(p)), by_hand)
    # Outside `where` a term is exactly 0, in value and gradient, even at log p = NEG.
    where = np.array([[True, True, False]])
    log_p = np.log(p)
    log_p[0, 2] = P.NEG
    value, grad = jax.value_and_grad(
        lambda lp: P.kl_with_log_targets(jnp.log(q), lp, where=where).sum()
    )(jnp.asarray(log_p, jnp.float32))
    assert_close(value, np.sum((q * np.log(q / p))[:, :2]))
    assert grad[0, 2] == 0 and np.all(np.isfinite(grad))


def test_group_log_probs_are_group_masses_and_within_group_softmaxes():
    masks = P.group_masks(np.array([0, 0, 1, 2, 2]), 4)  # group 3 empty
    x = np.array([[1.0, -0.5, 2.0, 0.3, 0.0]])
    log_mass, log_within = P.group_log_probs(jnp.asarray(x, jnp.float32), masks)
    p = np.exp(x) / np.exp(x).sum()
    assert_close(np.exp(log_mass)[:, :3], [[p[0, :2].sum(), p[0, 2], p[0, 3:].sum()]])
    assert np.isfinite(log_mass[0, 3]) and np.exp(log_mass[0, 3]) == 0  # the empty group
    within_0 = np.exp(log_within[0, 0, :2])
    assert_close(within_0, p[0, :2] / p[0, :2].sum())
