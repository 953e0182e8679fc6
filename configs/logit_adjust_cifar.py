"""Logit-adjusted loss / Balanced Softmax (Menon et al.; Ren et al.) on CIFAR-LT.

    python -m ltkd_jax.main --config configs/logit_adjust_cifar.py --workdir runs/la_c100 \
        --config.data.archive=../shared/data/cifar100-png.zip

ltkd_jax/methods/logit_adjust.py: CE(z + tau * log pi, y) in training, tau = 1; raw logits at test.
On the
BKD recipe (5.3) rather than the logit-adjustment repo's 1,241-epoch schedule.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.cifar_config(arg, "logit_adjust"))
