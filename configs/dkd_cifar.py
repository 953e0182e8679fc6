"""DKD (decoupled KD, Zhao et al.) on CIFAR-LT.

    python -m ltkd_jax.main --config configs/dkd_cifar.py --workdir runs/dkd_c100 \
        --config.teacher.workdir=runs/bkd_c100/teacher \
        --config.data.archive=../shared/data/cifar100-png.zip

ltkd_jax/methods/dkd.py: CE + min(epoch / 20, 1) * (alpha * TCKD + beta * NCKD), alpha = 1,
beta = 8, T = 4 (mdistiller CIFAR defaults), on the BKD recipe.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    c = recipes.cifar_config(arg, "dkd", temperature=4.0, alpha=1.0, beta=8.0)
    c.loss.warmup_epochs = 20
    return defaults.lock(c)
