"""KD with logit standardization (Sun et al., "Logit Standardization in Knowledge
Distillation", CVPR 2024; official code ``sunshangquan/logit-standardization-KD``,
``mdistiller/distillers/KD.py``).

Teacher and student logits are each z-scored per sample before the usual temperature
softmax, so the student matches the teacher's logit *relations*, not their range::

    s(x)  = (x - mean(x)) / (std(x) + 1e-7)         (std with Bessel's correction, as torch)
    L     = ce_weight * CE(z, y) + alpha * T^2 * batchmean KL(softmax(s(v)/T) || softmax(s(z)/T))

The CE sees the raw logits. Defaults are the official README's CIFAR-100 KD command
(``--logit-stand --base-temp 2 --kd-weight 9``) with mdistiller's CE weight 0.1. Shifting
or positively scaling either side's logits leaves the loss unchanged (up to the 1e-7).

Not a long-tailed method: a logit-distillation baseline, added as the worked example of a
method that lives in one module (README, "Adding a method").
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections

from ltkd_jax.methods import base
from ltkd_jax.methods import primitives as P
from ltkd_jax.methods.ce import cross_entropy
from ltkd_jax.methods.primitives import Array, ArrayLike, LossOutput

STD_EPS = 1e-7  # added to the standard deviation, as the official `normalize`


def standardize(logits: Array) -> Array:
    """Per-row z-score with the unbiased standard deviation (torch's default)."""
    centred = logits - jnp.mean(logits, axis=-1, keepdims=True)
    return centred / (jnp.std(logits, axis=-1, ddof=1, keepdims=True) + STD_EPS)


def lskd_loss(
    logits: ArrayLike,
    *,
    labels: ArrayLike,
    teacher_logits: ArrayLike,
    temperature: float = 2.0,
    alpha: float = 9.0,
    ce_weight: float = 0.1,
) -> LossOutput:
    """KD on standardized logits (module docstring). Parts: ``ce``, ``kd``."""
    P.check_logits(logits)
    dtype = P.compute_dtype(logits, teacher_logits)
    z, v = P.cast(logits, dtype), P.teacher(teacher_logits, dtype)
    ce, _ = cross_entropy(z, labels=labels)
    log_q = P.log_softmax_t(standardize(v), temperature)
    kd = P.kd_term(standardize(z), log_q, temperature)
    return ce_weight * ce + alpha * kd, {"ce": ce, "kd": kd}


def config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.temperature = 2.0  # base temperature T on the standardized logits
    c.alpha = 9.0  # weight of the T^2-scaled KL term
    c.ce_weight = 0.1  # weight of the CE term
    return c


def validate(config: ml_collections.ConfigDict) -> list[str]:
    return base.check_positive(config, "temperature") + base.check_non_negative(
        config, "alpha", "ce_weight"
    )


def make(config: ml_collections.ConfigDict, task: base.Task) -> base.LossFn:
    hparams = base.loss_kwargs(lskd_loss, config)

    def loss(student, labels, teachers, ctx):
        return lskd_loss(
            student.logits, labels=labels, teacher_logits=teachers[0].logits, **hparams
        )

    return loss


METHODS = (base.Spec("lskd", config, make, needs=base.one_teacher, validate=validate, doc=__doc__),)
