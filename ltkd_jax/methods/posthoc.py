"""Post-hoc corrections of a finished run, evaluated over a grid of tau (docs/evaluation.md).

- `tau_norm`: the classifier's class columns divided by their norm^tau, bias dropped
  (Kang et al.);
- `posthoc_la`: predictions from `z - tau * log(pi)` (Menon et al.).

Registry entries of kind `base.CORRECTION`: nothing is trained, and `ltkd_jax/runs/posthoc.py`
runs them. Every tau's test results go to `WORKDIR/metrics.jsonl` (split `test`, with a `tau`
field) and the run's summary is the best tau. With a validation split (a folder's val/, or
data.val_fraction) tau is chosen on it (records with split `val`). CIFAR-LT has no
validation split, so there the choice is made on the test split: an optimistic protocol, as
the results table says.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from ltkd_jax.methods import base, primitives


def tau_grid(step: float = 0.1, top: float = 2.0) -> np.ndarray:
    """0, 0.1, ..., 2.0: the grid of the classifier-balancing code."""
    return np.round(np.arange(0.0, top + step / 2, step), 6)


def tau_normalized_variables(variables: dict, tau: float) -> dict:
    """The classifier kernel tau-normalised; a linear head's bias set to zero (dropped)."""
    classifier = dict(variables["params"]["classifier"])
    classifier["kernel"] = primitives.tau_normalize(classifier["kernel"], tau)
    if "bias" in classifier:
        classifier["bias"] = jnp.zeros_like(classifier["bias"])
    params = {**variables["params"], "classifier": classifier}
    return {**variables, "params": params}


def _tau_norm(variables: dict, tau: float, log_prior: np.ndarray) -> tuple[dict, None]:
    return tau_normalized_variables(variables, float(tau)), None


def _logit_adjustment(variables: dict, tau: float, log_prior: np.ndarray) -> tuple:
    return variables, -tau * log_prior


def _no_loss_fields() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict()


def _needs_a_run(config: ml_collections.ConfigDict) -> base.Needs:
    return base.Needs(init_run=True)


METHODS = tuple(
    base.Spec(
        name,
        _no_loss_fields,
        None,
        needs=_needs_a_run,
        doc=__doc__,
        kind=base.CORRECTION,
        correct=correct,
    )
    for name, correct in (("tau_norm", _tau_norm), ("posthoc_la", _logit_adjustment))
)
