"""Class-balanced loss (Cui et al.) on CIFAR-LT: CE weighted by effective numbers.

    python -m ltkd_jax.main --config configs/cb_cifar.py --workdir runs/cb_c100 \
        --config.data.archive=../shared/data/cifar100-png.zip

ltkd_jax/methods/ce.py (cb): weights (1 - beta) / (1 - beta^n_c), beta = 0.9999, normalised to sum
C,
PyTorch weighted-mean reduction, from epoch 0 (the LDAM/BKD code's `Reweight` rule).
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.cifar_config(arg, "cb"))
