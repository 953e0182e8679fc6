"""DU-KD with teacher-guided label smoothing (TGLS), TCSVT 2024 - a RECONSTRUCTION
("DU-KD-R"): only the paper's abstract is known to us and no code is public. Report results
as DU-KD-R.

From the abstract: the student is trained in the balanced label space while distilling a
teacher trained on the long-tailed data, and its labels are smoothed by the teacher. Our
choices: the student's balanced logits ``z`` are moved to the training distribution,
``z_tr = z + tau * log pi`` (the logit-adjustment bridge, Menon et al. 2021), and::

    y~_i    = lam * onehot(y_i) + (1 - lam) * softmax(v_i / T_s)
    L_TGLS  = mean_i -sum_c y~_{i,c} * log_softmax(z_tr,i)_c
    L_DU-KD = T^2 * batchmean KL(softmax(v/T) || softmax(z_tr/T))
    L       = L_TGLS + alpha * L_DU-KD

Predict with the raw ``argmax z``. ``lam = 1`` makes TGLS the plain logit-adjusted loss.
``loss.prior_placement`` picks where the prior enters the KD term: ``inside``
``softmax((z + tau log pi)/T)`` (default; fixed point ``z = v - log pi``), ``outside``
``softmax(z/T + tau log pi)``, or ``teacher`` (balance the teacher instead:
``KL(softmax((v - tau log pi)/T) || softmax(z/T))``). ``loss.balance_teacher_labels`` smooths
with the balanced teacher ``softmax((v - tau log pi)/T_s)``. Defaults: T = 2, alpha = 1,
tau = 1, lam = 0.5, T_s = 1.

No published number is known; compare against KD on the same teacher.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ltkd_jax.methods import base
from ltkd_jax.methods import primitives as P
from ltkd_jax.methods.primitives import Array, ArrayLike, LossOutput

PRIOR_PLACEMENTS = ("inside", "outside", "teacher")


def _tgls_term(
    z: Array,
    v: Array,
    labels: ArrayLike,
    log_prior: Array,
    tau: float,
    lam: float,
    smoothing_temperature: float,
    balance_teacher_labels: bool,
) -> Array:
    """``mean_i -sum_c y~_{i,c} ls(z + tau log pi)_{i,c}``."""
    teacher = v - tau * log_prior if balance_teacher_labels else v
    soft = jax.lax.stop_gradient(jax.nn.softmax(teacher / smoothing_temperature, axis=-1))
    targets = lam * jax.nn.one_hot(labels, z.shape[-1], dtype=z.dtype) + (1.0 - lam) * soft
    return jnp.mean(P.soft_ce(jax.nn.log_softmax(z + tau * log_prior, axis=-1), targets))


def tgls_loss(
    logits: ArrayLike,
    *,
    labels: ArrayLike,
    teacher_logits: ArrayLike,
    class_counts: ArrayLike,
    lam: float = 0.5,
    smoothing_temperature: float = 1.0,
    tau: float = 1.0,
    balance_teacher_labels: bool = False,
) -> LossOutput:
    """Teacher-guided label smoothing alone - RECONSTRUCTION (module docstring): ``L_TGLS``.
    Parts: ``tgls``."""
    P.check_logits(logits)
    dtype = P.compute_dtype(logits, teacher_logits)
    z, v = P.cast(logits, dtype), P.teacher(teacher_logits, dtype)
    log_prior = P.log_prior(class_counts, dtype)
    tgls = _tgls_term(
        z, v, labels, log_prior, tau, lam, smoothing_temperature, balance_teacher_labels
    )
    return tgls, {"tgls": tgls}


def dukd_loss(
    logits: ArrayLike,
    *,
    labels: ArrayLike,
    teacher_logits: ArrayLike,
    class_counts: ArrayLike,
    temperature: float = 2.0,
    alpha: float = 1.0,
    tau: float = 1.0,
    lam: float = 0.5,
    smoothing_temperature: float = 1.0,
    balance_teacher_labels: bool = False,
    prior_placement: str = "inside",
) -> LossOutput:
    """DU-KD + TGLS - RECONSTRUCTION (module docstring): ``L_TGLS + alpha * L_DU-KD``.
    Parts: ``tgls``, ``dukd``."""
    if prior_placement not in PRIOR_PLACEMENTS:
        raise ValueError(
            f"prior_placement must be one of {PRIOR_PLACEMENTS}, got {prior_placement!r}"
        )
    P.check_logits(logits)
    dtype = P.compute_dtype(logits, teacher_logits)
    z, v = P.cast(logits, dtype), P.teacher(teacher_logits, dtype)
    log_prior = P.log_prior(class_counts, dtype)
    tgls = _tgls_term(
        z, v, labels, log_prior, tau, lam, smoothing_temperature, balance_teacher_labels
    )
    if prior_placement == "inside":
        log_q = P.log_softmax_t(v, temperature)
        log_p = P.log_softmax_t(z + tau * log_prior, temperature)
    elif prior_placement == "outside":
        log_q = P.log_softmax_t(v, temperature)
        log_p = jax.nn.log_softmax(z / temperature + tau * log_prior, axis=-1)
    else:
        log_q = P.log_softmax_t(v - tau * log_prior, temperature)
        log_p = P.log_softmax_t(z, temperature)
    dukd = temperature**2 * jnp.mean(P.kl_with_log_targets(log_q, log_p))
    return tgls + alpha * dukd, {"tgls": tgls, "dukd": dukd}


def config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.temperature = 2.0  # T of the KD term
    c.alpha = 1.0  # weight of the KD term
    c.tau = 1.0  # strength of the prior that moves the balanced logits to training space
    c.lam = 0.5  # TGLS: weight of the one-hot label against the teacher's distribution
    c.smoothing_temperature = 1.0  # TGLS: T_s of the teacher's smoothing distribution
    c.balance_teacher_labels = False  # TGLS: smooth with the prior-corrected teacher
    c.prior_placement = "inside"  # inside | outside | teacher (module docstring)
    return c


def validate(config: ml_collections.ConfigDict) -> list[str]:
    c = config.loss
    errors = base.check_choice("loss.prior_placement", c.prior_placement, PRIOR_PLACEMENTS)
    errors += base.check_positive(config, "temperature", "smoothing_temperature")
    errors += base.check_non_negative(config, "alpha", "tau")
    if not 0 <= c.lam <= 1:
        errors.append(f"config.loss.lam={c.lam} must be in [0, 1] (1 = no smoothing)")
    return errors


def make(config: ml_collections.ConfigDict, task: base.Task) -> base.LossFn:
    counts = jnp.asarray(task.class_counts)
    hparams = base.loss_kwargs(dukd_loss, config)

    def loss(student, labels, teachers, ctx):
        return dukd_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            class_counts=counts,
            **hparams,
        )

    return loss


METHODS = (base.Spec("dukd", config, make, needs=base.one_teacher, validate=validate, doc=__doc__),)
