"""Focal loss (Lin et al.) on CIFAR-LT.

    python -m ltkd_jax.main --config configs/focal_cifar.py --workdir runs/focal_c100 \
        --config.data.archive=../shared/data/cifar100-png.zip

ltkd_jax/methods/focal.py: mean (1 - p_y)^gamma * CE, gamma = 1 (the LDAM/BKD code); class weights
via --config.loss.class_weighting=reweight give CB-focal.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.cifar_config(arg, "focal"))
