"""Unit tests of `ltkd_jax.methods`: one module per method module (see conftest.py)."""
