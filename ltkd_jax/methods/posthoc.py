"""Post-hoc corrections of a finished run, evaluated over a grid of tau (docs/evaluation.md).

- `tau_norm`: the classifier's class columns divided by their norm^tau, bias dropped
  (Kang et al.);
- `posthoc_la`: predictions from `z - tau * log(pi)` (Menon et al.).

Nothing is trained; `job.correct_run` runs them. Every tau's test results go to
`WORKDIR/metrics.jsonl` (split `test`, with a `tau` field) and the run's summary is the best
tau. With a validation split (a folder's val/, or data.val_fraction) tau is chosen on it
(records with split `val`). CIFAR-LT has no validation split, so there the choice is made on
the test split: an optimistic protocol, as the results table says.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ltkd_jax.methods import primitives

POSTHOC = ("tau_norm", "posthoc_la")


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
