"""KRDistill-R on CIFAR-LT -- a reconstruction (ltkd_jax/methods/krdistill.py), not the paper's
method.

    python -m ltkd_jax.main --config configs/krdistill_cifar.py --workdir runs/kr_c100 \
        --config.teacher.workdir=runs/bkd_c100/teacher \
        --config.data.archive=../shared/data/cifar100-png.zip

    # a heterogeneous pair on the mdistiller recipe
    python -m ltkd_jax.main \
        --config configs/krdistill_cifar.py:teacher=resnet32x4,student=resnet8x4,recipe=mdistiller \
        --workdir runs/kr_r32x4_r8x4 --config.data.archive=../shared/data/cifar100-png.zip

L = CE + alpha * L_LRD (KD towards the prior-corrected teacher with its mistakes swapped
to the label, T = 4) + beta * L_RRD (a learned regressor of the student's features onto
the teacher's, centred at the balanced class mean). beta = 0 until the paper is checked;
--config.loss.beta=1 switches the feature term on.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.cifar_config(arg, "krdistill"))
