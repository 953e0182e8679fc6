"""Shared set-up of the per-method tests.

Layout: ``test_<module>.py`` tests ``ltkd_jax/methods/<module>.py`` (``test_primitives.py``
the shared numerics, ``test_registry.py`` the registry and the `ltkd_jax.losses` namespace).
Each method module declares its loss cases and inherits the shared property checks of
``properties.py`` (jit / vmap / batch-mean invariance, bf16 inputs, extreme logits, no
gradient to a teacher, float64 gradient checks) and registry checks (``SpecChecks``).

Reference values. Tests named ``test_tvN_*`` (TV1 ... TV17) compare a loss on the small
shared inputs of ``vectors.py`` with hand-checked reference values recorded when the losses
were first implemented, computed independently in float64 and printed to 6 decimals. They run
in float32 with ``rtol=1e-5`` (``1e-4`` for the LTKD group terms, whose small KLs lose more
digits to float32 cancellation) and ``atol=1e-6``, which covers the 6-decimal rounding.
"""

from __future__ import annotations

import jax
import pytest


@pytest.fixture
def fast_compiles():
    """Skip most XLA optimisations while checking gradients: the check compiles a dozen small
    float64 programs, and their compile time, not their run time, is what costs. Restored after."""
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
