"""Every loss function of `ltkd_jax.methods`, in one namespace.

Each loss lives in its method's module (``ltkd_jax/methods/<method>.py``, whose docstring
documents it); this module only gathers them, for users and notebooks that want the pure
functions without the trainer. The calling convention is in `ltkd_jax.methods.primitives`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from ltkd_jax.methods.bkd import bkd_loss
from ltkd_jax.methods.cbd import cbd_loss
from ltkd_jax.methods.ce import cross_entropy, weighted_cross_entropy
from ltkd_jax.methods.dkd import dkd_loss
from ltkd_jax.methods.dukd import dukd_loss, tgls_loss
from ltkd_jax.methods.focal import focal_loss
from ltkd_jax.methods.kd import kd_loss
from ltkd_jax.methods.krdistill import (
    krdistill_loss,
    krdistill_rectify_features,
    krdistill_rectify_logits,
)
from ltkd_jax.methods.ldam_drw import ldam_loss, ldam_margins
from ltkd_jax.methods.logit_adjust import logit_adjusted_loss
from ltkd_jax.methods.ltkd import (
    batch_rebalanced_group_log_masses,
    group_kl_decomposition,
    ltkd_loss,
    rebalanced_group_log_masses,
    thirds_groups,
)
from ltkd_jax.methods.primitives import (
    LossOutput,
    class_prior,
    drw_class_weights,
    effective_number_weights,
    inverse_frequency_weights,
    posthoc_logit_adjust,
    tau_normalize,
)

LOSSES: Mapping[str, Callable[..., LossOutput]] = {
    "ce": cross_entropy,
    "weighted_ce": weighted_cross_entropy,
    "focal": focal_loss,
    "ldam": ldam_loss,
    "logit_adjusted": logit_adjusted_loss,
    "kd": kd_loss,
    "dkd": dkd_loss,
    "bkd": bkd_loss,
    "tgls": tgls_loss,
    "dukd": dukd_loss,
    "krdistill": krdistill_loss,
    "cbd": cbd_loss,
    "ltkd": ltkd_loss,
}


def get_loss(name: str) -> Callable[..., LossOutput]:
    """The loss function registered under ``name`` (see ``LOSSES``)."""
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; known: {sorted(LOSSES)}") from None


__all__ = [
    "LOSSES",
    "batch_rebalanced_group_log_masses",
    "bkd_loss",
    "cbd_loss",
    "class_prior",
    "cross_entropy",
    "dkd_loss",
    "drw_class_weights",
    "dukd_loss",
    "effective_number_weights",
    "focal_loss",
    "get_loss",
    "group_kl_decomposition",
    "inverse_frequency_weights",
    "kd_loss",
    "krdistill_loss",
    "krdistill_rectify_features",
    "krdistill_rectify_logits",
    "ldam_loss",
    "ldam_margins",
    "logit_adjusted_loss",
    "ltkd_loss",
    "posthoc_logit_adjust",
    "rebalanced_group_log_masses",
    "tau_normalize",
    "tgls_loss",
    "thirds_groups",
    "weighted_cross_entropy",
]
