"""LDAM-DRW (Cao et al., NeurIPS 2019; official code ``kaidic/LDAM-DRW``, ``losses.py`` and
``cifar_train.py``).

The classifier is ``NormedLinear`` (cosines between normalised features and normalised class
columns, no bias; ``model.head=normed``). Class c gets the margin
``Delta_c = max_margin * n_c^{-1/4} / max_j n_j^{-1/4}`` (the rarest class the largest), and

    u_{i,c} = s * (cos_{i,c} - Delta_{y_i} [c = y_i]),    L = CE(u, y)

with s = 30, max_margin = 0.5. DRW (deferred re-weighting): the CE is unweighted until
``loss.drw_epoch`` (160 of 200), then weighted by effective numbers (beta 0.9999, PyTorch's
weighted mean).

Reference: 42.0% top-1 on CIFAR-100-LT IF100 and 77.0% on CIFAR-10-LT IF100, ResNet-32
(Cao et al. 2019, Table 2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from ltkd_jax.methods import base
from ltkd_jax.methods import primitives as P
from ltkd_jax.methods.primitives import Array, ArrayLike, LossOutput


def ldam_margins(class_counts: ArrayLike, max_margin: float = 0.5) -> Array:
    """``Delta_c = max_margin * n_c^{-1/4} / max_j n_j^{-1/4}``: the rarest class gets
    ``max_margin``."""
    counts = P.cast(class_counts, jnp.result_type(float))
    m = counts**-0.25
    return max_margin * m / jnp.max(m)


def ldam_loss(
    logits: ArrayLike,
    *,
    labels: ArrayLike,
    class_counts: ArrayLike,
    max_margin: float = 0.5,
    scale: float = 30.0,
    class_weights: ArrayLike | None = None,
) -> LossOutput:
    """LDAM on the COSINES of a ``NormedLinear`` head (module docstring). Parts: ``ldam``.

    With ``class_weights`` the CE is PyTorch's weighted mean (DRW: pass
    ``drw_class_weights(class_counts, epoch)``).
    """
    P.check_logits(logits)
    dtype = P.compute_dtype(logits, class_weights)
    cos = P.cast(logits, dtype)
    labels = jnp.asarray(labels)
    margins = P.cast(ldam_margins(class_counts, max_margin), dtype)[labels]
    onehot = jax.nn.one_hot(labels, cos.shape[-1], dtype=dtype)
    u = scale * (cos - margins[:, None] * onehot)
    w = None if class_weights is None else P.cast(class_weights, dtype)[labels]
    ldam = P.mean(P.nll(jax.nn.log_softmax(u, axis=-1), labels), w)
    return ldam, {"ldam": ldam}


def config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.max_margin = 0.5  # the rarest class's margin
    c.scale = 30.0  # s, the cosine scale
    base.add_class_weighting(c, "drw")
    return c


def validate(config: ml_collections.ConfigDict) -> list[str]:
    return base.check_class_weighting(config) + base.check_positive(config, "max_margin", "scale")


def make(config: ml_collections.ConfigDict, task: base.Task) -> base.LossFn:
    counts = jnp.asarray(task.class_counts)
    hparams = base.loss_kwargs(ldam_loss, config)

    def loss(student, labels, teachers, ctx):
        return ldam_loss(
            student.logits,
            labels=labels,
            class_counts=counts,
            class_weights=base.weights_or_none(config, ctx),
            **hparams,
        )

    return loss


METHODS = (
    base.Spec(
        "ldam_drw",
        config,
        make,
        validate=validate,
        doc=__doc__,
        head="normed",
        epoch_fields=base.WEIGHTING_EPOCH_FIELDS,
    ),
)
