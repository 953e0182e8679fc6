"""Quick-start: a long-tailed teacher, then a BKD student, on scikit-learn's 8x8 digits.

The data ships inside scikit-learn, so this needs no download and no archive:

    python -m ltkd_jax.main --config configs/quickstart.py --workdir /tmp/ltkd_quickstart

Digits (1,797 images, 10 classes) keep 2/3 of each class for training and are made
long-tailed with imbalance factor 10; shot groups use thresholds scaled to its size
(many > 50, few < 20 training images). Stage 1 trains a CE teacher (ResNet-8) into
WORKDIR/teacher, stage 2 distils a ResNet-8 student from it with BKD (ltkd_jax/methods/bkd.py);
both runs' overall and many / medium / few top-1 are printed side by side.
"""

from ltkd_jax.config import defaults


def get_config(arg=None):
    del arg
    c = defaults.base_config("bkd")
    c.data.name = "digits"
    c.data.imbalance_factor = 10.0
    c.data.augment = "none"
    c.data.many_threshold = 50
    c.data.few_threshold = 20
    c.loss.class_weighting = "reweight"  # effective-number weights from epoch 0 (as CIFAR-100)
    c.model.name = "resnet8"
    c.teacher.model = "resnet8"
    c.teacher.num_epochs = 30
    c.batch_size = 64
    c.num_epochs = 30
    c.eval_batch_size = 200
    c.eval_every_epochs = 5
    c.log_every_steps = 50
    c.optim.lr = 0.05
    c.optim.warmup_epochs = 2
    c.optim.decay_epochs = (20, 25)
    c.optim.decay_factor = 0.1
    return defaults.lock(c)
