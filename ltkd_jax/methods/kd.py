"""Vanilla knowledge distillation (Hinton et al. 2015).

    L = ce_weight * CE(z, y) + alpha * T^2 * batchmean KL(softmax(v/T) || softmax(z/T))

``z`` the student's logits, ``v`` the frozen teacher's. Defaults: plain Hinton KD with the
BKD repository's alpha = 1, T = 2. The official settings per recipe (`official_settings`):

- BKD recipe: the BKD repository's ``KDLoss`` (``train_student.py``), whose CE term is,
  easy to miss, weighted by class with the rule it forces on every loss (effective-number
  re-weighting from epoch 0 on CIFAR-100, DRW on CIFAR-10; ``base.bkd_repo_weighting``);
- mdistiller recipe: mdistiller's KD (``mdistiller/engine/cfg.py``, ``CFG.KD``:
  TEMPERATURE 4, LOSS.CE_WEIGHT 0.1, LOSS.KD_WEIGHT 0.9): ``T=4, ce_weight=0.1,
  alpha=0.9``, unweighted CE.

Reference: 42.48% overall / 13.38% tail for ResNet32x4 -> ResNet8x4 on CIFAR-100-LT (as
reported in LTKD, Kim 2026, per a third-party digest).
"""

from __future__ import annotations

import ml_collections

from ltkd_jax.methods import base
from ltkd_jax.methods import primitives as P
from ltkd_jax.methods.ce import cross_entropy, weighted_cross_entropy
from ltkd_jax.methods.primitives import ArrayLike, LossOutput


def kd_loss(
    logits: ArrayLike,
    *,
    labels: ArrayLike,
    teacher_logits: ArrayLike,
    temperature: float = 2.0,
    alpha: float = 1.0,
    ce_weight: float = 1.0,
    class_weights: ArrayLike | None = None,
) -> LossOutput:
    """Vanilla KD (module docstring); with ``class_weights`` the CE term is PyTorch's
    weighted mean. Parts: ``ce``, ``kd``."""
    P.check_logits(logits)
    dtype = P.compute_dtype(logits, teacher_logits, class_weights)
    z, v = P.cast(logits, dtype), P.teacher(teacher_logits, dtype)
    if class_weights is None:
        ce, _ = cross_entropy(z, labels=labels)
    else:
        ce, _ = weighted_cross_entropy(z, labels=labels, class_weights=class_weights)
    kd = P.kd_term(z, P.log_softmax_t(v, temperature), temperature)
    return ce_weight * ce + alpha * kd, {"ce": ce, "kd": kd}


def config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.temperature = 2.0  # T, softening teacher and student alike
    c.alpha = 1.0  # weight of the T^2-scaled KL term
    c.ce_weight = 1.0  # weight of the CE term
    base.add_class_weighting(c)
    return c


def validate(config: ml_collections.ConfigDict) -> list[str]:
    return (
        base.check_class_weighting(config)
        + base.check_positive(config, "temperature")
        + base.check_non_negative(config, "alpha", "ce_weight")
    )


def make(config: ml_collections.ConfigDict, task: base.Task) -> base.LossFn:
    hparams = base.loss_kwargs(kd_loss, config)

    def loss(student, labels, teachers, ctx):
        return kd_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            class_weights=base.weights_or_none(config, ctx),
            **hparams,
        )

    return loss


def official_settings(setting: base.Setting) -> dict:
    """The BKD repository's KD row under its recipe, mdistiller's KD under its recipe."""
    if setting.recipe == "bkd":
        return {"class_weighting": base.bkd_repo_weighting(setting.dataset)}
    if setting.recipe == "mdistiller":
        # mdistiller/engine/cfg.py: CFG.KD.TEMPERATURE = 4, CFG.KD.LOSS.CE_WEIGHT = 0.1,
        # CFG.KD.LOSS.KD_WEIGHT = 0.9.
        return {"temperature": 4.0, "ce_weight": 0.1, "alpha": 0.9}
    return {}


METHODS = (
    base.Spec(
        "kd",
        config,
        make,
        needs=base.one_teacher,
        validate=validate,
        doc=__doc__,
        epoch_fields=base.WEIGHTING_EPOCH_FIELDS,
        official_settings=official_settings,
    ),
)
