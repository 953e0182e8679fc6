"""Cross-entropy baselines: plain CE, the class-balanced loss and cRT's classifier re-training.

- ``ce``: ``L = mean_i -log_softmax(z_i)[y_i]``, instance sampling. With
  ``loss.class_weighting`` it becomes the weighted CE below. It is also the objective of
  every stage-1 teacher. Reference: ResNet-32 on CIFAR-100-LT IF100 reaches 38.3% top-1
  (Cao et al. 2019, Table 2; CIFAR-10-LT 70.4%).
- ``cb``: the class-balanced loss (Cui et al., CVPR 2019): CE weighted by the effective
  number of samples, ``w_c ∝ (1 - beta) / (1 - beta^{n_c})`` scaled to sum to C, beta =
  0.9999, reduced as PyTorch's weighted mean ``sum_i w_{y_i} l_i / sum_i w_{y_i}`` (the
  LDAM-DRW / BKD code, ``cifar_train.py``: ``train_rule=Reweight``).
- ``crt``: classifier re-training (Kang et al., ICLR 2020, "Decoupling representation and
  classifier"): a finished run's backbone frozen (BatchNorm statistics included), a fresh
  classifier trained with plain CE under class-balanced sampling (``configs/crt_cifar.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ltkd_jax.methods import base
from ltkd_jax.methods import primitives as P
from ltkd_jax.methods.primitives import ArrayLike, LossOutput


def cross_entropy(logits: ArrayLike, *, labels: ArrayLike) -> LossOutput:
    """Cross-entropy ``L = mean_i -ls(z_i)[y_i]``. Parts: ``ce``.

    Source: the standard objective; the LDAM-DRW and BKD code's ``nn.CrossEntropyLoss``.
    """
    P.check_logits(logits)
    z = P.cast(logits, P.compute_dtype(logits))
    ce = jnp.mean(P.nll(jax.nn.log_softmax(z, axis=-1), labels))
    return ce, {"ce": ce}


def weighted_cross_entropy(
    logits: ArrayLike, *, labels: ArrayLike, class_weights: ArrayLike
) -> LossOutput:
    """Class-weighted CE with PyTorch's reduction. Parts: ``ce``.

    ``L = sum_i w_{y_i} l_i / sum_i w_{y_i}``, ``l_i = -ls(z_i)[y_i]``: a weighted mean, not
    ``mean_i(w_{y_i} l_i)``. With effective-number weights it is the class-balanced loss of
    Cui et al. (2019). Source: ``nn.CrossEntropyLoss(weight=...)`` in the LDAM-DRW code.
    """
    P.check_logits(logits)
    dtype = P.compute_dtype(logits, class_weights)
    z, w = P.cast(logits, dtype), P.cast(class_weights, dtype)
    ce = P.mean(P.nll(jax.nn.log_softmax(z, axis=-1), labels), w[labels])
    return ce, {"ce": ce}


def config(weighting: str = "none") -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    base.add_class_weighting(c, weighting)
    return c


def _cb_config() -> ml_collections.ConfigDict:
    return config("reweight")


def _validate_cb(config: ml_collections.ConfigDict) -> list[str]:
    errors = base.check_class_weighting(config)
    if config.loss.class_weighting == "none":
        errors.append(
            "config.method='cb' weights the CE by class: set --config.loss.class_weighting="
            "reweight (from epoch 0) or drw"
        )
    return errors


def _make_ce(config: ml_collections.ConfigDict, task: base.Task) -> base.LossFn:
    weighted = config.loss.class_weighting != "none"

    def loss(student, labels, teachers, ctx):
        if weighted:
            return weighted_cross_entropy(
                student.logits, labels=labels, class_weights=ctx["class_weights"]
            )
        return cross_entropy(student.logits, labels=labels)

    return loss


def _crt_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict()


def _make_plain_ce(config: ml_collections.ConfigDict, task: base.Task) -> base.LossFn:
    def loss(student, labels, teachers, ctx):
        return cross_entropy(student.logits, labels=labels)

    return loss


def _crt_needs(config: ml_collections.ConfigDict) -> base.Needs:
    return base.Needs(frozen_backbone=True, init_run=True)


METHODS = (
    base.Spec(
        "ce",
        config,
        _make_ce,
        validate=base.check_class_weighting,
        doc=__doc__,
        epoch_fields=base.WEIGHTING_EPOCH_FIELDS,
    ),
    base.Spec(
        "cb",
        _cb_config,
        _make_ce,
        validate=_validate_cb,
        doc=__doc__,
        epoch_fields=base.WEIGHTING_EPOCH_FIELDS,
    ),
    # cRT: the classifier-balancing repo's ClassAwareSampler (docs/sampling.md).
    base.Spec(
        "crt", _crt_config, _make_plain_ce, needs=_crt_needs, doc=__doc__, sampler="class_balanced"
    ),
)
