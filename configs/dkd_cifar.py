"""DKD (decoupled KD, Zhao et al.) on CIFAR-LT.

    python -m ltkd_jax.main --config configs/dkd_cifar.py --workdir runs/dkd_c100 \
        --config.teacher.workdir=runs/bkd_c100/teacher \
        --config.data.archive=../shared/data/cifar100-png.zip

    # the mdistiller recipe's pair: beta 8 (mdistiller res32x4_res8x4.yaml)
    python -m ltkd_jax.main \
        --config configs/dkd_cifar.py:teacher=resnet32x4,student=resnet8x4,recipe=mdistiller \
        --workdir runs/dkd_r32x4_r8x4 --config.data.archive=../shared/data/cifar100-png.zip

ltkd_jax/methods/dkd.py: CE + min(epoch / 20, 1) * (alpha * TCKD + beta * NCKD), alpha = 1,
T = 4, and mdistiller's beta for the teacher: 2 for the ResNet-32 family (ResNet-32, -56,
-110 teachers; mdistiller res56_res20.yaml, res110_res32.yaml), 8 for ResNet32x4.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.cifar_config(arg, "dkd"))
