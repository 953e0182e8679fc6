"""Class-balanced distillation, stage 2 (Iscen et al., "Class-Balanced Distillation for
Long-Tailed Visual Recognition", BMVC 2021; official code
``google-research/google-research/class_balanced_distillation``).

Stage 1 trains the teachers with plain CE (``cbd``: one; ``cbd_ensemble``: ``teacher.count``
of them, the last half with colour jitter + random grayscale, as the official
``data_aug_seed`` teachers). In stage 2 a student is trained from scratch on a class-balanced
stream with a cosine classifier (sigma 20, ``model.head=cosine``) and::

    L = (1 - alpha) * CE(z, y) + alpha * beta * mean_i (1 - cos(f_s,i, f_T,i))
    f_T = concat_k normalize(f_k)          (every teacher weighs the same)

``f_s`` is the student's feature after a learned projection ``Dense(sum_k D_k) + ReLU`` on
its pooled features: the method's ``neck`` module (parameters at ``params['neck']``), which
the classifier also sees. It is initialised as the official Keras Dense (Glorot-uniform
kernel, zero bias). alpha = 0.4, beta = 100, no temperature.

Reference (ResNet-50, official): CBD_ENS 55.6% top-1 on ImageNet-LT and 73.6% on
iNaturalist 2018 (Iscen et al. 2021).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ltkd_jax.methods import base
from ltkd_jax.methods import primitives as P
from ltkd_jax.methods.ce import cross_entropy
from ltkd_jax.methods.primitives import ArrayLike, LossOutput


def cbd_loss(
    logits: ArrayLike,
    *,
    labels: ArrayLike,
    features: ArrayLike,
    teacher_features: ArrayLike | Sequence[ArrayLike],
    alpha: float = 0.4,
    beta: float = 100.0,
) -> LossOutput:
    """CBD stage 2 (module docstring). Parts: ``ce``, ``feature`` (= ``mean(1 - cos)``).

    ``features`` [B, D] is the student's post-projection feature; ``teacher_features`` one
    [B, D_k] array per teacher (a sequence, or one array for one teacher), sum_k D_k = D.
    """
    P.check_logits(logits)
    if not isinstance(teacher_features, (list, tuple)):
        teacher_features = (teacher_features,)
    dtype = P.compute_dtype(logits, features, *teacher_features)
    z = P.cast(logits, dtype)
    f_s = P.l2_normalize(P.cast(features, dtype))
    f_t = jnp.concatenate([P.l2_normalize(P.teacher(f, dtype)) for f in teacher_features], axis=-1)
    if f_t.shape[-1] != f_s.shape[-1]:
        raise ValueError(f"student feature width {f_s.shape[-1]} != teachers' {f_t.shape[-1]}")
    cos = jnp.sum(f_s * P.l2_normalize(f_t), axis=-1)
    feature = jnp.mean(1.0 - cos)
    ce, _ = cross_entropy(z, labels=labels)
    return (1.0 - alpha) * ce + alpha * beta * feature, {"ce": ce, "feature": feature}


class Projection(nn.Dense):
    """``relu(Dense(x))`` with the official code's Keras defaults: Glorot-uniform, zero bias."""

    kernel_init: nn.initializers.Initializer = nn.initializers.glorot_uniform()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return nn.relu(super().__call__(inputs))


def config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.alpha = 0.4  # share of the feature term against the CE
    c.beta = 100.0  # scale of the cosine feature term
    return c


def validate(config: ml_collections.ConfigDict) -> list[str]:
    errors = base.check_non_negative(config, "beta")
    if not 0 <= config.loss.alpha <= 1:
        errors.append(f"config.loss.alpha={config.loss.alpha} must be in [0, 1], e.g. 0.4")
    return errors


def _ensemble_needs(config: ml_collections.ConfigDict) -> base.Needs:
    return base.Needs(teachers=-1)


def student_parts(
    config: ml_collections.ConfigDict, teacher_widths: tuple[int, ...]
) -> base.StudentParts:
    """The projection, as wide as the teachers' features together."""
    width = sum(teacher_widths)
    return base.StudentParts(
        neck=Projection(width, dtype=jnp.dtype(config.model.dtype), param_dtype=jnp.float32)
    )


def make(config: ml_collections.ConfigDict, task: base.Task) -> base.LossFn:
    hparams = base.loss_kwargs(cbd_loss, config)

    def loss(student, labels, teachers, ctx):
        return cbd_loss(
            student.logits,
            labels=labels,
            features=student.features,
            teacher_features=tuple(t.features for t in teachers),
            **hparams,
        )

    return loss


# Teachers and student use the cosine classifier; stage 2 samples class-balanced batches (on
# CIFAR; the large-scale recipe uses the official example-stream resampler). CBD_ENS is the
# official vanilla_seed1/2 + data_aug_seed1/2: four teachers, the last two colour-jittered.
METHODS = tuple(
    base.Spec(
        name,
        config,
        make,
        needs=needs,
        validate=validate,
        student_parts=student_parts,
        doc=__doc__,
        sampler="class_balanced",
        head="cosine",
        teacher_count=count,
        color_jitter_teachers=count // 2,
    )
    for name, needs, count in (
        ("cbd", base.one_teacher, 1),
        ("cbd_ensemble", _ensemble_needs, 4),
    )
)
