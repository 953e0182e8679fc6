"""Logit-adjusted loss (Menon et al., ICLR 2021; official code
``google-research/logit_adjustment``, ``utils.py``), equal to Balanced Softmax (Ren et al.,
NeurIPS 2020) at tau = 1.

    L = CE(z + tau * log pi, y)         pi_c = n_c / N, the training prior

Predict with the raw ``argmax z``: the adjustment only acts in training. Balanced Softmax adds
``log n_c``, which differs by a constant per row, so the loss is the same. The official
code's 1e-12 inside the log is left out (the counts are positive).

Reference: 43.9% top-1 on CIFAR-100-LT IF100, ResNet-32 (Menon et al. 2021, on their longer
schedule; 44.1 in the repository's README). Here it runs on the shared BKD recipe.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ltkd_jax.methods import base
from ltkd_jax.methods import primitives as P
from ltkd_jax.methods.primitives import ArrayLike, LossOutput


def logit_adjusted_loss(
    logits: ArrayLike, *, labels: ArrayLike, class_counts: ArrayLike, tau: float = 1.0
) -> LossOutput:
    """``CE(z + tau * log pi, y)`` (module docstring). Parts: ``ce``."""
    P.check_logits(logits)
    z = P.cast(logits, P.compute_dtype(logits))
    adjusted = z + tau * P.log_prior(class_counts, z.dtype)
    ce = jnp.mean(P.nll(jax.nn.log_softmax(adjusted, axis=-1), labels))
    return ce, {"ce": ce}


def config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.tau = 1.0  # strength of the prior added to the logits
    return c


def validate(config: ml_collections.ConfigDict) -> list[str]:
    return base.check_non_negative(config, "tau")


def make(config: ml_collections.ConfigDict, task: base.Task) -> base.LossFn:
    counts = jnp.asarray(task.class_counts)
    hparams = base.loss_kwargs(logit_adjusted_loss, config)

    def loss(student, labels, teachers, ctx):
        return logit_adjusted_loss(student.logits, labels=labels, class_counts=counts, **hparams)

    return loss


METHODS = (base.Spec("logit_adjust", config, make, validate=validate, doc=__doc__),)
