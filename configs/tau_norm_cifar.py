"""tau-normalisation (Kang et al.) of a finished CIFAR-LT run: no training.

    python -m ltkd_jax.main --config configs/tau_norm_cifar.py --workdir runs/taunorm_c100 \
        --config.init.workdir=runs/ce_c100 \
        --config.data.archive=../shared/data/cifar100-png.zip

docs/evaluation.md#post-hoc-corrections: classifier columns w_c / ||w_c||^tau, bias dropped, for
tau in 0, 0.1, ...,
2.0; every tau's test result is logged and the best is reported. Pass
--config.method=posthoc_la for post-hoc logit adjustment (z - tau * log pi)
instead. CIFAR-LT has no validation split, so tau is chosen on the test split.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.cifar_config(arg, "tau_norm"))
