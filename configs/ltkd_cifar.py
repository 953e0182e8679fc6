"""LTKD (Kim, CVPR 2026, arXiv 2506.18496) on CIFAR-LT, as a third-party digest of the paper
describes it; no official code is public.

    python -m ltkd_jax.main --config configs/ltkd_cifar.py --workdir runs/ltkd_c100 \
        --config.teacher.workdir=runs/bkd_c100/teacher \
        --config.data.archive=../shared/data/cifar100-png.zip

    # the paper's reported pair, ResNet32x4 -> ResNet8x4 on the mdistiller recipe; the
    # "few" column is then the bottom 33% of classes, LTKD's "tail"
    python -m ltkd_jax.main \
        --config configs/ltkd_cifar.py:teacher=resnet32x4,student=resnet8x4,recipe=mdistiller \
        --workdir runs/ltkd_r32x4_r8x4 --config.data.archive=../shared/data/cifar100-png.zip

KL(q || p) split into a cross-group term over the head / medium / tail masses (top 33% /
next 34% / bottom 33% of classes by training count) and within-group terms. The teacher's
group masses are rebalanced per batch toward uniform (loss.rebalance=batch) and the
within-group terms weighted uniformly: CE + T^2 (alpha cross + beta within). Our choices:
T = 4, alpha = beta = 1, the exact scaling formula (losses.batch_rebalanced_group_log_masses).
Alternatives: loss.rebalance (batch | r1 | r2 | none), loss.groups (tail33 | shot | thirds).
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.cifar_config(arg, "ltkd"))
