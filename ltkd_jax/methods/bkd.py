"""Balanced knowledge distillation (Zhang et al., "Balanced Knowledge Distillation for
Long-tailed Learning", Neurocomputing 2023; official code ``EricZsy/BalancedKnowledgeDistillation``,
``train_student.py`` and ``losses.py``).

An instance-balanced CE plus a class-balanced KD term: the teacher's softened distribution is
re-weighted per class COLUMN and renormalised per sample::

    q~_{i,c} = w_c q_{i,c} / sum_j w_j q_{i,j}          q = softmax(v / T)
    L_BKD    = CE(z, y) + alpha * T^2 * batchmean KL(q~ || softmax(z / T))

computed stably as ``log q~ = log_softmax(v/T + log w)``; the scale of ``w`` cancels. The CE
is unweighted. ``w`` are effective-number weights (beta 0.9999) by the rule the official code
forces per dataset: from epoch 0 on CIFAR-100 (``loss.class_weighting=reweight``), from epoch
160 on CIFAR-10 (``drw``: BKD is vanilla KD before). alpha = 1, T = 2 (the code's defaults).

A common bug this avoids: weighting ``q`` by the weight of the sample's own label
(``w[y_i]``), which cancels in the renormalisation and silently gives vanilla KD.
Fixed point: KL = 0 at ``z = v + T log w + const``.

The paper's own numbers are not known to us; compare against KD on the same teacher
(``scripts/reproduce.py``, docs/reproduce.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ltkd_jax.methods import base
from ltkd_jax.methods import primitives as P
from ltkd_jax.methods.ce import cross_entropy
from ltkd_jax.methods.primitives import ArrayLike, LossOutput


def bkd_loss(
    logits: ArrayLike,
    *,
    labels: ArrayLike,
    teacher_logits: ArrayLike,
    class_weights: ArrayLike,
    temperature: float = 2.0,
    alpha: float = 1.0,
) -> LossOutput:
    """BKD (module docstring). Parts: ``ce``, ``kd``."""
    P.check_logits(logits)
    dtype = P.compute_dtype(logits, teacher_logits, class_weights)
    z, v = P.cast(logits, dtype), P.teacher(teacher_logits, dtype)
    # The floor turns a zero weight into a (finite) removal of that class from the target.
    weights = jax.lax.stop_gradient(P.cast(class_weights, dtype))
    log_w = jnp.log(jnp.maximum(weights, jnp.finfo(dtype).tiny))
    # v/T + log w, not (v + log w)/T: the weights act on probabilities, outside the temperature.
    log_q = jax.nn.log_softmax(v / temperature + log_w, axis=-1)
    ce, _ = cross_entropy(z, labels=labels)
    kd = P.kd_term(z, log_q, temperature)
    return ce + alpha * kd, {"ce": ce, "kd": kd}


def config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.temperature = 2.0  # T
    c.alpha = 1.0  # weight of the T^2-scaled KL term
    # The weights on the teacher's class columns (the CE stays unweighted); none gives KD.
    base.add_class_weighting(c, "reweight")
    return c


def validate(config: ml_collections.ConfigDict) -> list[str]:
    return (
        base.check_class_weighting(config)
        + base.check_positive(config, "temperature")
        + base.check_non_negative(config, "alpha")
    )


def make(config: ml_collections.ConfigDict, task: base.Task) -> base.LossFn:
    hparams = base.loss_kwargs(bkd_loss, config)

    def loss(student, labels, teachers, ctx):
        return bkd_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            class_weights=ctx["class_weights"],
            **hparams,
        )

    return loss


def official_settings(setting: base.Setting) -> dict:
    """The weighting rule the official code forces per dataset, whatever the recipe."""
    return {"class_weighting": base.bkd_repo_weighting(setting.dataset)}


METHODS = (
    base.Spec(
        "bkd",
        config,
        make,
        needs=base.one_teacher,
        validate=validate,
        doc=__doc__,
        epoch_fields=base.WEIGHTING_EPOCH_FIELDS,
        official_settings=official_settings,
    ),
)
