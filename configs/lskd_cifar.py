"""KD with logit standardization (Sun et al., CVPR 2024) on CIFAR-LT: ltkd_jax/methods/lskd.py.

    python -m ltkd_jax.main --config configs/lskd_cifar.py --workdir runs/lskd_c100 \
        --config.teacher.workdir=runs/bkd_c100/teacher \
        --config.data.archive=../shared/data/cifar100-png.zip

    # the official code's setting: ResNet32x4 -> ResNet8x4 on the mdistiller recipe
    python -m ltkd_jax.main \
        --config configs/lskd_cifar.py:teacher=resnet32x4,student=resnet8x4,recipe=mdistiller \
        --workdir runs/lskd_r32x4_r8x4 --config.data.archive=../shared/data/cifar100-png.zip

CE weight 0.1 + 9 * T^2 KL between the z-scored teacher and student logits, T = 2.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.cifar_config(arg, "lskd"))
