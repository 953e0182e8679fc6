"""Numerical building blocks shared by the method modules: log-softmax at a temperature,
KL from log-probabilities, weighted means, class priors and weights, group masses.

Every loss in `ltkd_jax.methods` follows one calling convention, so a method can be swapped
for another by name:

    loss, parts = fn(logits, *, labels, teacher_logits=..., class_counts=..., ...)

- ``logits`` [B, C] come first and positionally; everything else is keyword-only, with one
  meaning everywhere: ``labels`` [B] int, ``teacher_logits`` [B, C], ``class_counts`` [C]
  training counts (positive), ``class_weights`` [C], ``temperature``, ``alpha``, ``beta``,
  ``gamma``, ``tau``, ``features`` / ``teacher_features``. A loss takes only what it uses.
- ``loss`` is a scalar batch mean; ``parts`` holds each term *before* its weight, so ``loss``
  is the weighted sum of ``parts``. ``jax.value_and_grad(..., has_aux=True)`` takes the pair.

Numerics: bf16/f16 inputs are computed in float32, float64 stays float64 (for
``jax.test_util.check_grads``). Log-probabilities come from ``log_softmax``, never
``log(softmax)``. Masks use the finite ``NEG`` inside a ``where``, never ``-inf``. Anything
derived from a teacher passes through ``stop_gradient``.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from ltkd_jax.models.heads import NORM_EPS, l2_normalize  # noqa: F401 - one definition

Array = jax.Array
ArrayLike = Any  # jax.typing.ArrayLike, kept loose for numpy inputs and Python scalars.
Parts = dict[str, Array]
LossOutput = tuple[Array, Parts]

# Stand-in for log(0) when masking logits: finite, so `0 * NEG` is 0 and no gradient sees
# inf - inf. mdistiller's -1000 offset is too small for logits of +-1e4; -1e30 is below any
# real logit and far from float32 overflow.
NEG = -1e30


def compute_dtype(*xs: ArrayLike) -> Any:
    """Float dtype to compute in: at least float32 (bf16/f16 upcast), float64 if given."""
    # canonicalize: numpy float64 inputs count as float32 unless x64 is enabled.
    dtypes = [jax.dtypes.canonicalize_dtype(jnp.result_type(x)) for x in xs if x is not None]
    floats = [d for d in dtypes if jnp.issubdtype(d, jnp.floating)]
    return jnp.result_type(*floats, jnp.float32)


def cast(x: ArrayLike, dtype: Any) -> Array:
    return jnp.asarray(x).astype(dtype)


def log_softmax_t(logits: Array, temperature: ArrayLike = 1.0) -> Array:
    """Row-wise ``log_softmax(z / T)``."""
    return jax.nn.log_softmax(logits / temperature, axis=-1)


def kl_with_log_targets(log_q: Array, log_p: Array, where: Array | None = None) -> Array:
    """Per-row ``KL(q || p) = sum_c q_c (log q_c - log p_c)`` from log-probabilities.

    The target ``q`` (the teacher) comes first. Entries outside ``where`` contribute exactly
    0, in value and gradient.
    """
    terms = jnp.exp(log_q) * (log_q - log_p)
    if where is not None:
        terms = jnp.where(where, terms, 0.0)
    return jnp.sum(terms, axis=-1)


def mean(values: Array, weights: Array | None = None) -> Array:
    """Batch mean; with ``weights`` PyTorch's weighted mean ``sum w l / sum w``."""
    if weights is None:
        return jnp.mean(values)
    return jnp.sum(weights * values) / jnp.sum(weights)


def nll(log_probs: Array, labels: Array) -> Array:
    """Per-sample ``-log_probs[i, y_i]``."""
    labels = jnp.asarray(labels)
    return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def soft_ce(log_probs: Array, targets: Array) -> Array:
    """Per-sample ``-sum_c t_c log_probs_c``."""
    return -jnp.sum(targets * log_probs, axis=-1)


def log_prior(class_counts: ArrayLike, dtype: Any) -> Array:
    """``log pi_c = log n_c - log N``: the training prior."""
    counts = cast(class_counts, dtype)
    return jnp.log(counts) - jnp.log(jnp.sum(counts))


def check_logits(logits: ArrayLike, name: str = "logits") -> None:
    if jnp.ndim(logits) != 2:
        raise ValueError(f"{name} must have shape [B, C], got {jnp.shape(logits)}")


def teacher(teacher_logits: ArrayLike, dtype: Any) -> Array:
    """Teacher outputs: cast and cut from the graph (no gradient ever reaches a teacher)."""
    return jax.lax.stop_gradient(cast(teacher_logits, dtype))


def kd_term(student: Array, log_q: Array, temperature: ArrayLike) -> Array:
    """``T^2 * batchmean KL(q || softmax(z / T))`` for given teacher log-targets ``log_q``
    (Hinton et al. 2015: the T^2 keeps the gradient scale independent of T)."""
    kl = kl_with_log_targets(log_q, log_softmax_t(student, temperature))
    return temperature**2 * jnp.mean(kl)


def group_log_probs(x: Array, masks: Array) -> tuple[Array, Array]:
    """Group log-masses and within-group log-probabilities of the rows of ``x``.

    Args:
      x: [B, C] logits already divided by the temperature.
      masks: bool [K, C] or [B, K, C]; ``masks[..., k, c]`` says class c is in group k.

    Returns:
      ``log_mass`` [B, K] = ``LSE_{c in G_k} x_c - LSE_c x_c`` and ``log_within`` [B, K, C] =
      ``x_c - LSE_{c' in G_k} x_{c'}`` (meaningful on members only; read it through ``masks``).
      An empty group gets a log-mass of about ``NEG``, i.e. mass 0, and stays finite.
    """
    grouped = jnp.where(masks, x[..., None, :], NEG)
    lse_group = jax.nn.logsumexp(grouped, axis=-1)
    log_mass = lse_group - jax.nn.logsumexp(x, axis=-1, keepdims=True)
    log_within = grouped - lse_group[..., None]
    return log_mass, log_within


def group_kl(student: Array, teacher: Array, masks: Array) -> tuple[Array, Array, Array, Array]:
    """Cross-group KL [B], within-group KL [B, K], teacher and student log-masses [B, K].

    The chain rule of KL over a partition of the classes, exact:
    ``KL(q || p) = KL(Q || P) + sum_k Q_k KL(qh^k || ph^k)`` (DKD, Zhao et al. 2022, is its
    two-group case). ``student`` and ``teacher`` are logits already divided by T.
    """
    log_p_mass, log_p_within = group_log_probs(student, masks)
    log_q_mass, log_q_within = group_log_probs(teacher, masks)
    cross = kl_with_log_targets(log_q_mass, log_p_mass)
    within = kl_with_log_targets(log_q_within, log_p_within, where=masks)
    return cross, within, log_q_mass, log_p_mass


def group_masks(class_groups: ArrayLike, num_groups: int) -> Array:
    """bool [K, C] membership matrix from group ids [C] in ``0..K-1``."""
    groups = jnp.asarray(class_groups)
    return groups[None, :] == jnp.arange(num_groups, dtype=groups.dtype)[:, None]


def class_prior(class_counts: ArrayLike) -> Array:
    """Training prior ``pi_c = n_c / N``, in the default float dtype."""
    counts = cast(class_counts, jnp.result_type(float))
    return counts / jnp.sum(counts)


def effective_number_weights(class_counts: ArrayLike, beta: ArrayLike = 0.9999) -> Array:
    """Effective-number class weights (Cui et al. 2019), as the BKD and LDAM-DRW code
    computes them: ``w_c = (1 - beta) / (1 - beta^{n_c})``, then ``w <- C * w / sum(w)``.

    ``beta = 0`` gives all ones. Computed as ``expm1(b) / expm1(n_c b)`` with ``b = log(beta)``
    (``log`` taken in float64 when ``beta`` is a Python number): ``1 - 0.9999`` formed in
    float32 would carry a relative error of 1e-4, ``expm1`` avoids that cancellation. A class
    with no images weighs as one with a single image.
    """
    counts = jnp.maximum(cast(class_counts, jnp.result_type(float)), 1)
    if isinstance(beta, (int, float)):
        if beta == 0:
            return jnp.ones_like(counts)
        log_beta = jnp.asarray(math.log(beta), counts.dtype)
    else:
        # A traced beta = 0 gives log_beta = -inf and expm1(-inf) / expm1(-inf) = 1, the limit.
        log_beta = jnp.log(cast(beta, counts.dtype))
    w = jnp.expm1(log_beta) / jnp.expm1(counts * log_beta)
    return counts.shape[-1] * w / jnp.sum(w)


def inverse_frequency_weights(class_counts: ArrayLike, power: float = 1.0) -> Array:
    """Inverse-frequency class weights ``w_c ∝ n_c^{-power}``, scaled to sum to C.

    ``power = 1``: inverse frequency; ``0.5``: inverse square root. An empty class weighs as a
    one-image class.
    """
    counts = jnp.maximum(cast(class_counts, jnp.result_type(float)), 1)
    w = counts ** (-power)
    return counts.shape[-1] * w / jnp.sum(w)


def drw_class_weights(
    class_counts: ArrayLike,
    epoch: ArrayLike,
    *,
    drw_epoch: int = 160,
    beta: float = 0.9999,
) -> Array:
    """Deferred re-weighting (Cao et al. 2019, LDAM-DRW ``cifar_train.py``): ones before
    ``drw_epoch``, effective-number weights from it. ``epoch`` (0-based) may be traced."""
    weights = effective_number_weights(class_counts, beta)
    return jnp.where(jnp.asarray(epoch) >= drw_epoch, weights, jnp.ones_like(weights))


def tau_normalize(kernel: ArrayLike, tau: ArrayLike) -> Array:
    """tau-normalised classifier ``w_c / ||w_c||^tau`` (Kang et al. 2020, "Decoupling
    representation and classifier").

    ``kernel`` is a Flax Dense kernel [D, C]: column c is class c. The caller drops the bias
    (logits = ``x @ tau_normalize(kernel, tau)``). An all-zero column stays zero.
    """
    k = cast(kernel, compute_dtype(kernel))
    norms = jnp.sqrt(jnp.sum(jnp.square(k), axis=0, keepdims=True))
    return k / jnp.maximum(norms, NORM_EPS) ** tau


def posthoc_logit_adjust(logits: ArrayLike, class_counts: ArrayLike, tau: float = 1.0) -> Array:
    """Post-hoc logit adjustment ``z - tau * log pi`` (Menon et al. 2021); predict with its
    argmax."""
    z = cast(logits, compute_dtype(logits))
    return z - tau * log_prior(class_counts, z.dtype)
