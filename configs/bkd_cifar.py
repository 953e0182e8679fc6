"""BKD (balanced knowledge distillation) on CIFAR-100-LT IF 100, ResNet-32 -> ResNet-32.

The main job. Without a teacher it first trains the CE teacher into WORKDIR/teacher
(stage 1), then the student (stage 2); rerunning resumes whichever stage was cut off:

    python -m ltkd_jax.main --config configs/bkd_cifar.py --workdir runs/bkd_c100 \
        --config.data.archive=../shared/data/cifar100-png.zip

With a finished teacher run, and other data or architectures through the config argument:

    python -m ltkd_jax.main --config configs/bkd_cifar.py:dataset=cifar10,imb=50 \
        --workdir runs/bkd_c10 --config.teacher.workdir=runs/ce_c10_if50 \
        --config.data.archive=../shared/data/cifar10-jpeg.zip

ltkd_jax/methods/bkd.py: CE + alpha * T^2 * KL(q~ || p) with the teacher's softened distribution
re-weighted per class column by effective-number weights (beta 0.9999); alpha = 1, T = 2.
CIFAR-100 re-weights from epoch 0; CIFAR-10 follows the repo's DRW rule (plain KD until
epoch 160). Recipe (docs/recipes.md#bkd-cifar-recipe): 200 epochs, batch 128, SGD 0.9, wd 2e-4,
warm-up 5, 1e-3 at 160,
1e-5 at 180.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.cifar_config(arg, "bkd"))
