"""KD on CIFAR-LT: the BKD repository's KD row by default, plain Hinton KD one override away.

    python -m ltkd_jax.main --config configs/kd_cifar.py --workdir runs/kd_c100 \
        --config.teacher.workdir=runs/bkd_c100/teacher \
        --config.data.archive=../shared/data/cifar100-png.zip

    # mdistiller's KD on its recipe: 0.1 CE + 0.9 T^2 KL, T = 4
    python -m ltkd_jax.main \
        --config configs/kd_cifar.py:teacher=resnet32x4,student=resnet8x4,recipe=mdistiller \
        --workdir runs/kd_r32x4_r8x4 --config.data.archive=../shared/data/cifar100-png.zip

Loss: ce_weight * CE + alpha * T^2 * KL(softmax(v/T) || softmax(z/T)), with the official
values of the recipe (ltkd_jax/methods/kd.py). recipe=bkd (the default): the BKD
repository's KD row, alpha = 1, T = 2, and a CE term weighted by class as its
train_student.py forces on every loss (effective-number weights from epoch 0 on CIFAR-100,
DRW from epoch 160 on CIFAR-10); plain Hinton KD is --config.loss.class_weighting=none.
recipe=mdistiller: mdistiller's KD, ce_weight 0.1, alpha 0.9, T = 4, unweighted CE.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.cifar_config(arg, "kd"))
