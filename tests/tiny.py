"""The tiny digits recipe shared by the trainer tests (and, as a config file, by the
multi-host test's subprocesses). Imports nothing from conftest, so a subprocess that loads
it keeps its own JAX device settings.

    python -m ltkd_jax.main --config tests/tiny.py --workdir /tmp/tiny
"""

from ltkd_jax.config import defaults


def tiny_config(**overrides):
    """Digits-LT, ResNet-8, 2 epochs x 3 steps: seconds on a CPU. A `method` override
    comes with that method's own `config.loss` defaults."""
    c = defaults.base_config(overrides.pop("method", "ce"))
    c.data.name = "digits"
    c.data.imbalance_factor = 10.0
    c.data.augment = "none"
    c.data.many_threshold, c.data.few_threshold = 50, 20
    c.model.name = "resnet8"
    c.batch_size = 32
    c.num_epochs = 2
    c.max_steps_per_epoch = 3
    c.eval_batch_size = 200
    c.log_every_steps = 2
    c.optim.lr, c.optim.warmup_epochs, c.optim.decay_epochs = 0.05, 1, (1,)
    c.progress_bar = False
    for key, value in overrides.items():
        section, _, field = key.rpartition(".")
        (c[section] if section else c)[field] = value
    return defaults.lock(c)


# The multi-host variant: cifar augmentation exercises the global-batch augmentation draw.
MULTIHOST_OVERRIDES = {"data.augment": "cifar", "log_every_steps": 1}


def get_config(arg=None):
    """As a config file: the multi-host variant; `tests/tiny.py:METHOD` runs METHOD."""
    return tiny_config(method=arg or "ce", **MULTIHOST_OVERRIDES)
