"""CE teacher on CIFAR-100-LT (IF 100), ResNet-32, the BKD recipe
(docs/recipes.md#bkd-cifar-recipe).

    python -m ltkd_jax.main --config configs/ce_cifar.py --workdir runs/ce_cifar100_if100 \
        --config.data.archive=../shared/data/cifar100-png.zip

CIFAR-10, another imbalance factor, another model or the mdistiller recipe through the
config argument (recipes.cifar_config; `student` is the model trained here):

    python -m ltkd_jax.main --config configs/ce_cifar.py:dataset=cifar10,imb=50 \
        --workdir runs/ce_cifar10_if50 --config.data.archive=../shared/data/cifar10-jpeg.zip

    # the ResNet32x4 teacher of the mdistiller pairs
    python -m ltkd_jax.main --config configs/ce_cifar.py:student=resnet32x4,recipe=mdistiller \
        --workdir runs/ce_r32x4 --config.data.archive=../shared/data/cifar100-png.zip

200 epochs, batch 128, SGD momentum 0.9, coupled weight decay 2e-4, 5-epoch linear
warm-up, LR 0.1 -> 1e-3 at epoch 160 -> 1e-5 at 180; instance sampling, pad-4 crop and
flip. The last epoch's checkpoint is the teacher (as the BKD code loads its teacher).
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.cifar_config(arg, "ce"))
