"""Vanilla KD (Hinton et al.) on CIFAR-LT, the baseline of every long-tailed KD method.

    python -m ltkd_jax.main --config configs/kd_cifar.py --workdir runs/kd_c100 \
        --config.teacher.workdir=runs/bkd_c100/teacher \
        --config.data.archive=../shared/data/cifar100-png.zip

methods.md 4.7: CE + alpha * T^2 * KL(softmax(v/T) || softmax(z/T)), alpha = 1, T = 2, on
the BKD recipe. The BKD repo's own KD baseline weights its CE term by class; get it with
--config.loss.class_weighting=reweight (CIFAR-100) or drw (CIFAR-10).
"""

from ltkd_jax import config_lib


def get_config(arg=None):
    return config_lib.lock(config_lib.cifar_config(arg, "kd", temperature=2.0, alpha=1.0))
