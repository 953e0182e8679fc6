"""KRDistill (Huang et al., arXiv 2409.07694) - a RECONSTRUCTION ("KRDistill-R"): only the
abstract and the names of its two losses are known to us and no code is public. Report
results as KRDistill-R.

From the abstract: the teacher's knowledge is rectified before distillation, its logits (a
logit rectification distillation loss, LRD) and its representation (RRD). Our choices, with
``alpha`` = lambda_L and ``beta`` = lambda_F::

    L     = CE(z, y) + alpha * L_LRD + beta * L_RRD
    L_LRD = T^2 * batchmean KL(softmax(r~/T) || softmax(z/T))
              r = v - tau log pi; where argmax r != y, swap r_argmax and r_y
    L_RRD = mean_i || g(f^s_i) - f~^t_i ||^2
              f~^t = f^t - mu_pi + mu_bar,  mu_pi = sum_c pi_c mu_c,  mu_bar = mean_c mu_c

``mu_c`` are the teacher's class-mean features on the un-augmented training set, ``g`` a
learned linear regressor from the student's feature width to the teacher's: the method's
``side`` module (parameters at ``params['side']``), trained with the student. The feature
term (and with it the regressor and the class means) exists only when ``beta > 0``; beta = 0
is our default until the paper can be checked. T = 4 suits heterogeneous CIFAR pairs
(ResNet32x4 -> ResNet8x4 on the mdistiller recipe).

No published number is known; compare against KD on the same teacher.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ltkd_jax import models
from ltkd_jax.methods import base
from ltkd_jax.methods import primitives as P
from ltkd_jax.methods.ce import cross_entropy
from ltkd_jax.methods.primitives import Array, ArrayLike, LossOutput
from ltkd_jax.models import heads


def krdistill_rectify_logits(
    teacher_logits: ArrayLike,
    *,
    labels: ArrayLike,
    class_counts: ArrayLike,
    tau: float = 1.0,
    swap: bool = True,
) -> Array:
    """Rectified teacher logits ``r~`` - RECONSTRUCTION: ``r = v - tau log pi``, then the
    ground-truth class swapped to the top where the argmax is wrong. No gradient."""
    dtype = P.compute_dtype(teacher_logits)
    r = P.teacher(teacher_logits, dtype) - tau * P.log_prior(class_counts, dtype)
    if swap:
        labels = jnp.asarray(labels)
        num_classes = r.shape[-1]
        is_label = jax.nn.one_hot(labels, num_classes, dtype=bool)
        is_argmax = jax.nn.one_hot(jnp.argmax(r, axis=-1), num_classes, dtype=bool)
        r_label = jnp.take_along_axis(r, labels[..., None], axis=-1)
        r_max = jnp.max(r, axis=-1, keepdims=True)
        # When argmax == label both masks hit the same entry and r_max == r_label: a no-op.
        r = jnp.where(is_label, r_max, jnp.where(is_argmax, r_label, r))
    return jax.lax.stop_gradient(r)


def krdistill_rectify_features(
    teacher_features: ArrayLike, *, class_feature_means: ArrayLike, class_counts: ArrayLike
) -> Array:
    """Rectified teacher features ``f~^t = f^t - mu_pi + mu_bar`` - RECONSTRUCTION. No
    gradient."""
    dtype = P.compute_dtype(teacher_features, class_feature_means)
    f_t = P.cast(teacher_features, dtype)
    mu = P.cast(class_feature_means, dtype)
    prior = jnp.exp(P.log_prior(class_counts, dtype))
    shift = jnp.mean(mu, axis=0) - prior @ mu
    return jax.lax.stop_gradient(f_t + shift)


def krdistill_loss(
    logits: ArrayLike,
    *,
    labels: ArrayLike,
    teacher_logits: ArrayLike,
    class_counts: ArrayLike,
    features: ArrayLike | None = None,
    teacher_features: ArrayLike | None = None,
    class_feature_means: ArrayLike | None = None,
    temperature: float = 4.0,
    alpha: float = 1.0,
    beta: float = 0.0,
    tau: float = 1.0,
    swap: bool = True,
) -> LossOutput:
    """KRDistill-R - RECONSTRUCTION (module docstring). Parts: ``ce``, ``lrd`` and, with
    features, ``rrd``.

    ``features`` [B, D] is the student feature already mapped by the regressor ``g``;
    ``teacher_features`` [B, D] and ``class_feature_means`` [C, D] come from the frozen
    teacher. Without ``features`` the feature term is off, which needs ``beta = 0``.
    """
    P.check_logits(logits)
    dtype = P.compute_dtype(logits, teacher_logits, features)
    z = P.cast(logits, dtype)
    ce, _ = cross_entropy(z, labels=labels)
    r = krdistill_rectify_logits(
        P.cast(teacher_logits, dtype), labels=labels, class_counts=class_counts, tau=tau, swap=swap
    )
    lrd = P.kd_term(z, P.log_softmax_t(r, temperature), temperature)
    loss, parts = ce + alpha * lrd, {"ce": ce, "lrd": lrd}
    if features is None:
        if isinstance(beta, (int, float)) and beta == 0:
            return loss, parts
        raise ValueError(
            "krdistill_loss: beta != 0 needs features, teacher_features and class_feature_means"
        )
    if teacher_features is None or class_feature_means is None:
        raise ValueError("krdistill_loss: features need teacher_features and class_feature_means")
    g = P.cast(features, dtype)
    target = krdistill_rectify_features(
        P.cast(teacher_features, dtype),
        class_feature_means=P.cast(class_feature_means, dtype),
        class_counts=class_counts,
    )
    rrd = jnp.mean(jnp.sum(jnp.square(g - target), axis=-1))
    parts["rrd"] = rrd
    return loss + beta * rrd, parts


def config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.temperature = 4.0  # T of the logit term
    c.alpha = 1.0  # lambda_L, weight of the rectified-logit KD term
    c.beta = 0.0  # lambda_F, weight of the feature term; > 0 adds the regressor
    c.tau = 1.0  # strength of the prior removed from the teacher's logits
    c.swap = True  # put the ground-truth class on top of the rectified teacher
    return c


def _uses_features(config: ml_collections.ConfigDict) -> bool:
    return config.loss.beta > 0


def validate(config: ml_collections.ConfigDict) -> list[str]:
    return base.check_positive(config, "temperature") + base.check_non_negative(
        config, "alpha", "beta", "tau"
    )


def needs(config: ml_collections.ConfigDict) -> base.Needs:
    return base.Needs(teachers=1, feature_means=_uses_features(config))


def student_parts(
    config: ml_collections.ConfigDict, teacher_widths: tuple[int, ...]
) -> base.StudentParts:
    """The regressor g onto the teacher's feature width (`heads.linear`: Kaiming-normal
    kernel, PyTorch's bias init)."""
    if not _uses_features(config):
        return base.StudentParts()
    width = models.feature_dim(config.model.name)
    regressor = heads.linear(teacher_widths[0], width, dtype=jnp.dtype(config.model.dtype))
    return base.StudentParts(side=regressor)


def make(config: ml_collections.ConfigDict, task: base.Task) -> base.LossFn:
    counts = jnp.asarray(task.class_counts)
    hparams = base.loss_kwargs(krdistill_loss, config)
    means = None
    if _uses_features(config):
        if task.teacher_feature_means is None:
            raise ValueError("krdistill's feature term needs the teacher's class feature means")
        means = jnp.asarray(task.teacher_feature_means)

    def loss(student, labels, teachers, ctx):
        feature_args = {}
        if means is not None:
            feature_args = dict(
                features=student.features,
                teacher_features=teachers[0].features,
                class_feature_means=means,
            )
        return krdistill_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            class_counts=counts,
            **hparams,
            **feature_args,
        )

    return loss


METHODS = (
    base.Spec(
        "krdistill",
        config,
        make,
        needs=needs,
        validate=validate,
        student_parts=student_parts,
        doc=__doc__,
    ),
)
