"""cRT (classifier re-training, Kang et al.) on a finished CIFAR-LT run.

    python -m ltkd_jax.main --config configs/crt_cifar.py --workdir runs/crt_c100 \
        --config.init.workdir=runs/ce_c100 \
        --config.data.archive=../shared/data/cifar100-png.zip

ltkd_jax/methods/ce.py (crt): the run's backbone frozen (BatchNorm statistics included), the linear
classifier re-initialised and trained with CE for 10 epochs on class-balanced batches,
cosine learning rate.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    c = recipes.cifar_config(arg, "crt")
    c.num_epochs = 10  # cRT's own schedule (classifier-balancing cRT configs)
    c.optim.schedule, c.optim.warmup_epochs = "cosine", 0
    return defaults.lock(c)
