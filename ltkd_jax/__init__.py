"""ltkd_jax: long-tailed knowledge distillation in JAX/Flax."""

__version__ = "0.1.0"
