"""DU-KD with TGLS on CIFAR-LT -- a reconstruction (ltkd_jax/methods/dukd.py), not the paper's code.

    python -m ltkd_jax.main --config configs/dukd_cifar.py --workdir runs/dukd_c100 \
        --config.teacher.workdir=runs/bkd_c100/teacher \
        --config.data.archive=../shared/data/cifar100-png.zip

L = TGLS soft CE on z + log(pi) (labels lam * onehot + (1 - lam) * softmax(v)) + alpha *
T^2 * KL(softmax(v/T) || softmax((z + log pi)/T)); lam = 0.5, alpha = 1, T = 2. The open
choices are config fields: loss.prior_placement (inside | outside | teacher), loss.lam,
loss.tau. Predictions use the raw logits.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.cifar_config(arg, "dukd"))
