"""LTKD (Kim, "Distilling Balanced Knowledge from a Biased Teacher", CVPR 2026, arXiv
2506.18496) - in part a RECONSTRUCTION ("LTKD-R"): no official code is public; our sources
are the paper's abstract and a third-party digest of the paper.

The KL between teacher ``q`` and student ``p`` splits exactly over a partition of the classes
into groups ``G_k`` (head / medium / tail; the chain rule of KL, DKD's target/non-target
split generalised)::

    KL(q || p) = KL(Q || P) + sum_k Q_k KL(qh^k || ph^k)

``Q``/``P`` the group masses at temperature T, ``qh^k``/``ph^k`` the softmaxes over group k's
members. LTKD replaces the teacher's biased group masses by rebalanced ones ``Qt`` and the
within-group weights ``Q_k`` by constants::

    L = ce_weight * CE(z, y)
      + alpha * T^2 * batchmean KL(Qt || P)                  (rebalanced cross-group)
      + beta  * T^2 * batchmean sum_k w_k KL(qh^k || ph^k)   (re-weighted within-group)

From the digest: the groups are the top 33% / next 34% / bottom 33% of classes by training
count (``loss.groups=tail33``); ``Qt`` rebalances the teacher's group masses per batch
toward uniform (``loss.rebalance=batch``); ``w_k`` is a uniform constant. Our choices: the
exact batch rule (`batch_rebalanced_group_log_masses`), T = 4, alpha = beta = 1, and the
alternatives ``rebalance`` r1 (prior-corrected teacher inside T), r2 (group-level
correction) and none, ``groups`` shot (the evaluation groups) and thirds, and
``within_weighting`` mean / teacher. With ``rebalance=none``, ``within_weighting=teacher``,
alpha = beta = 1 the distillation part is exactly vanilla T^2 KL.

Reference: 51.08% overall / 27.21% tail for ResNet32x4 -> ResNet8x4 on CIFAR-100-LT IF100
(the mdistiller recipe, as the digest reports the paper's table).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ltkd_jax.data import longtail
from ltkd_jax.methods import base
from ltkd_jax.methods import primitives as P
from ltkd_jax.methods.ce import cross_entropy
from ltkd_jax.methods.primitives import Array, ArrayLike, LossOutput

REBALANCE = ("batch", "r1", "r2", "none")
GROUPS = ("tail33", "shot", "thirds")
WITHIN_WEIGHTING = ("uniform", "mean", "teacher")


def thirds_groups(class_counts: ArrayLike, num_groups: int = 3) -> np.ndarray:
    """Classes sorted by count (descending, ties by index) cut into equal blocks; the last
    block takes the remainder (CIFAR-100: 33 / 33 / 34). 0 = head. int32 [C]."""
    counts = np.asarray(class_counts)
    num_classes = counts.shape[-1]
    rank = np.empty(num_classes, np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(num_classes)
    block = max(num_classes // num_groups, 1)
    return np.minimum(rank // block, num_groups - 1).astype(np.int32)


def group_kl_decomposition(
    logits: ArrayLike,
    *,
    teacher_logits: ArrayLike,
    class_groups: ArrayLike,
    num_groups: int = 3,
    temperature: float = 4.0,
) -> dict[str, Array]:
    """Per-sample terms of ``KL(q || p) = KL(Q || P) + sum_k Q_k KL(qh^k || ph^k)`` at
    temperature T, without ``T^2`` and batch mean.

    Returns ``log_student_mass`` / ``log_teacher_mass`` (log P, log Q) [B, K], ``cross_kl``
    [B] and ``within_kl`` [B, K]. Empty groups have mass 0 and within-KL 0.
    """
    P.check_logits(logits)
    dtype = P.compute_dtype(logits, teacher_logits)
    z, v = P.cast(logits, dtype), P.teacher(teacher_logits, dtype)
    masks = P.group_masks(class_groups, num_groups)
    cross, within, log_q, log_p = P.group_kl(z / temperature, v / temperature, masks)
    return {
        "log_student_mass": log_p,
        "log_teacher_mass": log_q,
        "cross_kl": cross,
        "within_kl": within,
    }


def _batch_rebalance(log_q: Array, masks: Array) -> Array:
    """Scales each group's column of ``Q`` [B, K] so the batch's group masses become equal,
    then renormalises every row (see `batch_rebalanced_group_log_masses`)."""
    log_batch_mass = jax.nn.logsumexp(log_q, axis=0)  # log sum_b Q_bk
    log_uniform = jax.nn.logsumexp(log_batch_mass) - jnp.log(log_q.shape[-1])
    # An empty group has mass ~0 in every row; scaling it up would give it mass, so it keeps 1.
    log_scale = jnp.where(jnp.any(masks, axis=-1), log_uniform - log_batch_mass, 0.0)
    return jax.lax.stop_gradient(jax.nn.log_softmax(log_q + log_scale, axis=-1))


def batch_rebalanced_group_log_masses(
    teacher_logits: ArrayLike,
    *,
    class_groups: ArrayLike,
    num_groups: int = 3,
    temperature: float = 4.0,
) -> Array:
    """LTKD's batch-level rebalanced teacher group targets ``log Qt`` [B, K].

    The digest describes the rule in words: within each batch, sum the teacher's group
    probabilities over the batch, compute per-group factors that move the groups toward
    uniform, scale each sample's group probabilities and renormalise. The exact form is OUR
    choice::

        M_k   = sum_b Q_bk                         (batch group masses, teacher at T)
        s_k   = (sum_j M_j / K) / M_k              (scales every M_k to the uniform mass)
        Qt_bk = s_k Q_bk / sum_j s_j Q_bj          (per-sample renormalisation)

    If every row has the same ``Q``, ``Qt`` is exactly uniform. Under ``jit`` with a sharded
    batch the sums run over the global batch, so the result does not depend on the device
    count. The statistics come from the teacher only, without gradient. Empty groups keep
    mass 0.
    """
    dtype = P.compute_dtype(teacher_logits)
    v = P.teacher(teacher_logits, dtype)
    masks = P.group_masks(class_groups, num_groups)
    return _batch_rebalance(P.group_log_probs(v / temperature, masks)[0], masks)


def rebalanced_group_log_masses(
    teacher_logits: ArrayLike,
    *,
    class_groups: ArrayLike,
    class_counts: ArrayLike | None = None,
    num_groups: int = 3,
    temperature: float = 4.0,
    tau: float = 1.0,
    rebalance: str = "r1",
) -> Array:
    """Rebalanced teacher group targets ``log Qt`` [B, K] by rule - RECONSTRUCTION.

    - ``"r1"``: group masses of the prior-corrected teacher, prior inside T:
      ``log Qt_k = LSE_{c in G_k}((v_c - tau log pi_c)/T) - LSE_c((v_c - tau log pi_c)/T)``.
    - ``"r2"``: group-level correction outside T:
      ``log Qt = ls(log Q + log(|G_k|/C) - log pi_{G_k})``, ``pi_{G_k} = sum_{c in G_k} pi_c``.
    - ``"none"``: ``Qt = Q`` (vanilla KD's cross term).
    - ``"batch"``: `batch_rebalanced_group_log_masses`.
    """
    if rebalance not in REBALANCE:
        raise ValueError(f"rebalance must be one of {REBALANCE}, got {rebalance!r}")
    dtype = P.compute_dtype(teacher_logits)
    v = P.teacher(teacher_logits, dtype)
    masks = P.group_masks(class_groups, num_groups)
    if rebalance == "none":
        return P.group_log_probs(v / temperature, masks)[0]
    if rebalance == "batch":
        return _batch_rebalance(P.group_log_probs(v / temperature, masks)[0], masks)
    if class_counts is None:
        raise ValueError(f"rebalance={rebalance!r} needs class_counts")
    log_prior = P.log_prior(class_counts, dtype)
    if rebalance == "r1":
        return P.group_log_probs((v - tau * log_prior) / temperature, masks)[0]
    log_q = P.group_log_probs(v / temperature, masks)[0]
    sizes = jnp.sum(masks, axis=-1).astype(dtype)
    group_prior = masks.astype(dtype) @ jnp.exp(log_prior)
    # Empty groups: log Q is ~NEG already; the floors only keep log(0) out of the sum.
    tiny = jnp.finfo(dtype).tiny
    correction = jnp.log(jnp.maximum(sizes, 1.0) / masks.shape[-1]) - jnp.log(
        jnp.maximum(group_prior, tiny)
    )
    return jax.nn.log_softmax(log_q + correction, axis=-1)


def _within_weights(kind: str, num_groups: int, log_q_mass: Array, dtype) -> Array:
    if kind == "uniform":
        return jnp.ones((num_groups,), dtype)
    if kind == "mean":
        return jnp.full((num_groups,), 1.0 / num_groups, dtype)
    return jnp.exp(log_q_mass)  # per-sample teacher masses Q_k, vanilla KD's weights


def ltkd_loss(
    logits: ArrayLike,
    *,
    labels: ArrayLike,
    teacher_logits: ArrayLike,
    class_counts: ArrayLike | None = None,
    class_groups: ArrayLike | None = None,
    num_groups: int = 3,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 1.0,
    tau: float = 1.0,
    ce_weight: float = 1.0,
    rebalance: str = "r1",
    within_weighting: str = "uniform",
) -> LossOutput:
    """LTKD - in part a RECONSTRUCTION (module docstring). Parts: ``ce``, ``cross``,
    ``within`` (each ``T^2``-scaled, before ``alpha``/``beta``).

    ``class_groups`` [C] int in ``0..num_groups-1`` (0 = head) defaults to the shot groups of
    ``class_counts`` (many / medium / few, `data.longtail.shot_groups`, so the counts must then
    be concrete, not traced); ``num_groups`` must be static. This function
    keeps ``rebalance="r1"`` as its default so the recorded test vectors stay valid; the
    method's config default is ``batch``, the paper's rule.
    """
    if within_weighting not in WITHIN_WEIGHTING:
        raise ValueError(
            f"within_weighting must be one of {WITHIN_WEIGHTING}, got {within_weighting!r}"
        )
    P.check_logits(logits)
    if class_groups is None:
        if class_counts is None:
            raise ValueError("ltkd_loss needs class_groups or class_counts")
        class_groups = longtail.shot_groups(np.asarray(class_counts))
    dtype = P.compute_dtype(logits, teacher_logits)
    z, v = P.cast(logits, dtype), P.teacher(teacher_logits, dtype)
    masks = P.group_masks(class_groups, num_groups)
    ce, _ = cross_entropy(z, labels=labels)

    log_p_mass, log_p_within = P.group_log_probs(z / temperature, masks)
    log_q_mass, log_q_within = P.group_log_probs(v / temperature, masks)
    log_qt = rebalanced_group_log_masses(
        v,
        class_groups=class_groups,
        class_counts=class_counts,
        num_groups=num_groups,
        temperature=temperature,
        tau=tau,
        rebalance=rebalance,
    )
    cross = temperature**2 * jnp.mean(P.kl_with_log_targets(log_qt, log_p_mass))
    within_kl = P.kl_with_log_targets(log_q_within, log_p_within, where=masks)  # [B, K]
    weights = _within_weights(within_weighting, num_groups, log_q_mass, dtype)
    within = temperature**2 * jnp.mean(jnp.sum(weights * within_kl, axis=-1))
    loss = ce_weight * ce + alpha * cross + beta * within
    return loss, {"ce": ce, "cross": cross, "within": within}


def ltkd_groups(name: str, task: base.Task) -> np.ndarray:
    """LTKD's class groups: tail33 (33/34/33% of classes by count, the paper's), shot (the
    evaluation groups of the task) or thirds (three equal blocks)."""
    if name == "tail33":
        return longtail.tail33_groups(task.class_counts)
    if name == "shot":
        return np.asarray(task.class_groups)
    if name == "thirds":
        return thirds_groups(task.class_counts)
    raise ValueError(f"config.loss.groups={name!r} is not known; choose one of {GROUPS}")


def config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.temperature = 4.0  # T
    c.alpha = 1.0  # weight of the rebalanced cross-group term
    c.beta = 1.0  # weight of the within-group term
    c.ce_weight = 1.0  # weight of the CE term
    c.tau = 1.0  # prior strength of the r1 / r2 rules
    # Cross-group target: batch (the paper's batch-level rule) | r1 | r2 | none.
    c.rebalance = "batch"
    # Class groups: tail33 (top 33% / next 34% / bottom 33% of classes by training count,
    # the paper's) | shot (the evaluation groups) | thirds.
    c.groups = "tail33"
    c.within_weighting = "uniform"  # within-group weights: uniform | mean | teacher
    return c


def validate(config: ml_collections.ConfigDict) -> list[str]:
    c = config.loss
    return (
        base.check_choice("loss.rebalance", c.rebalance, REBALANCE)
        + base.check_choice("loss.groups", c.groups, GROUPS)
        + base.check_choice("loss.within_weighting", c.within_weighting, WITHIN_WEIGHTING)
        + base.check_positive(config, "temperature")
        + base.check_non_negative(config, "alpha", "beta", "ce_weight", "tau")
    )


def make(config: ml_collections.ConfigDict, task: base.Task) -> base.LossFn:
    counts = jnp.asarray(task.class_counts)
    groups = jnp.asarray(ltkd_groups(config.loss.groups, task))
    hparams = base.loss_kwargs(ltkd_loss, config)

    def loss(student, labels, teachers, ctx):
        return ltkd_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            class_counts=counts,
            class_groups=groups,
            **hparams,
        )

    return loss


METHODS = (base.Spec("ltkd", config, make, needs=base.one_teacher, validate=validate, doc=__doc__),)
