"""The loss functions of the library's seed methods and baselines, in one namespace.

Each loss lives in its method's module (``ltkd_jax/methods/<method>.py``, whose docstring
documents it); this module only gathers them, for users and notebooks that want the pure
functions without the trainer. A method added later is imported from its own module
(``from ltkd_jax.methods.lskd import lskd_loss``). The calling convention is in
`ltkd_jax.methods.primitives`; the registry of methods is `ltkd_jax.methods.METHODS`.
"""

from __future__ import annotations

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
    class_prior,
    drw_class_weights,
    effective_number_weights,
    inverse_frequency_weights,
    posthoc_logit_adjust,
    tau_normalize,
)

__all__ = [
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
