"""LDAM-DRW (Cao et al.) on CIFAR-LT.

    python -m ltkd_jax.main --config configs/ldam_drw_cifar.py --workdir runs/ldam_c100 \
        --config.data.archive=../shared/data/cifar100-png.zip

ltkd_jax/methods/ldam_drw.py: cosine (NormedLinear) head, logits 30 * (cos - Delta_y on the target),
margins 0.5 * n_c^-1/4 / max; effective-number re-weighting from epoch 160 (DRW).
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.cifar_config(arg, "ldam_drw"))
