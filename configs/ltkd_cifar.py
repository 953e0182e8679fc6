"""LTKD-R on CIFAR-LT -- a reconstruction (methods.md 7A.3), not the paper's code.

    python -m ltkd_jax.main --config configs/ltkd_cifar.py --workdir runs/ltkd_c100 \
        --config.teacher.workdir=runs/bkd_c100/teacher \
        --config.data.archive=../shared/data/cifar100-png.zip

KL(q || p) split into a cross-group term over head / medium / tail masses and within-group
terms; the teacher's group masses are rebalanced (R1: prior inside T) and the within-group
terms weighted uniformly. T = 4, alpha = beta = 1. Open choices: loss.rebalance (r1 | r2 |
none), loss.groups (shot | thirds).
"""

from ltkd_jax import config_lib


def get_config(arg=None):
    c = config_lib.cifar_config(arg, "ltkd", temperature=4.0, alpha=1.0, beta=1.0)
    return config_lib.lock(c)
