"""KD on CIFAR-LT: the BKD repository's KD row by default, plain Hinton KD one override away.

    python -m ltkd_jax.main --config configs/kd_cifar.py --workdir runs/kd_c100 \
        --config.teacher.workdir=runs/bkd_c100/teacher \
        --config.data.archive=../shared/data/cifar100-png.zip

Loss: CE + alpha * T^2 * KL(softmax(v/T) || softmax(z/T)), alpha = 1, T = 2, on the BKD
recipe. The BKD repository's train_student.py forces a class-weighting rule on every loss,
so its KDLoss uses nn.CrossEntropyLoss(weight=per_cls_weights): the CE term is weighted by
effective-number weights from epoch 0 on CIFAR-100 and from epoch 160 (DRW) on CIFAR-10.
That is this config's default under recipe=bkd, so the KD row matches the repository's.
Plain Hinton KD (unweighted CE) is --config.loss.class_weighting=none; under
recipe=mdistiller the CE is unweighted.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    c = recipes.cifar_config(arg, "kd", bkd_repo_rule=True, temperature=2.0, alpha=1.0)
    return defaults.lock(c)
