"""Optimiser and learning-rate schedules built from `config.optim`.

The BKD / LDAM-DRW recipe (docs/recipes.md#bkd-cifar-recipe; `adjust_learning_rate` in BKD's
train_student.py) sets the learning rate *per epoch*: a linear
warm-up `lr * (e + 1) / warmup` for the first epochs, then multiplicative drops at fixed
epochs. The schedules here are functions of the optimiser step and derive the epoch as
`step // steps_per_epoch`, so they stay inside the compiled step and never recompile.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import ml_collections
import optax
from absl import logging


def step_schedule(
    base_lr: float,
    steps_per_epoch: int,
    *,
    warmup_epochs: int,
    decay_epochs: tuple[int, ...],
    decay_factor: float,
) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Per-epoch warm-up plus step decay (BKD: 0.02, 0.04, 0.1, ..., 1e-3 at 160, 1e-5 at 180)."""
    boundaries = jnp.asarray(sorted(decay_epochs), jnp.int32)

    def schedule(step):
        epoch = jnp.asarray(step, jnp.int32) // steps_per_epoch
        warm = base_lr * (epoch + 1) / max(warmup_epochs, 1)
        num_drops = jnp.sum(epoch >= boundaries)
        decayed = base_lr * decay_factor**num_drops
        return jnp.where(epoch < warmup_epochs, warm, decayed).astype(jnp.float32)

    return schedule


def cosine_schedule(
    base_lr: float, steps_per_epoch: int, *, warmup_epochs: int, num_epochs: int
) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Linear warm-up over whole epochs, then per-step cosine decay to 0 (docs/recipes.md)."""
    total = steps_per_epoch * num_epochs
    warmup = steps_per_epoch * warmup_epochs
    if warmup == 0:
        return optax.cosine_decay_schedule(base_lr, total)
    return optax.warmup_cosine_decay_schedule(0.0, base_lr, warmup, total)


SCHEDULES = ("step", "cosine")


def cosine_warmup_epochs(warmup_epochs: int, num_epochs: int) -> int:
    """The warm-up a cosine schedule of `num_epochs` runs: as configured, or half the epochs
    (rounded down) when it would fill the whole run, so a short run (`num_epochs=1` or 2 on a
    recipe with 5 warm-up epochs) still decays, as the folder recipe's `epochs=` does."""
    return warmup_epochs if warmup_epochs < num_epochs else num_epochs // 2


def make_schedule(
    optim: ml_collections.ConfigDict, steps_per_epoch: int, num_epochs: int
) -> Callable[[jnp.ndarray], jnp.ndarray]:
    if optim.schedule == "step":
        return step_schedule(
            optim.lr,
            steps_per_epoch,
            warmup_epochs=optim.warmup_epochs,
            decay_epochs=tuple(optim.decay_epochs),
            decay_factor=optim.decay_factor,
        )
    if optim.schedule == "cosine":
        warmup = cosine_warmup_epochs(optim.warmup_epochs, num_epochs)
        if warmup != optim.warmup_epochs:
            logging.warning(
                "num_epochs=%d is not longer than optim.warmup_epochs=%d: the warm-up is "
                "scaled down to %d epoch(s), so the cosine decay has steps (set "
                "--config.optim.warmup_epochs to choose another)",
                num_epochs,
                optim.warmup_epochs,
                warmup,
            )
        return cosine_schedule(
            optim.lr, steps_per_epoch, warmup_epochs=warmup, num_epochs=num_epochs
        )
    raise ValueError(f"config.optim.schedule={optim.schedule!r} is not one of {SCHEDULES}")


def make_optimizer(
    optim: ml_collections.ConfigDict, schedule: Callable[[jnp.ndarray], jnp.ndarray]
) -> optax.GradientTransformation:
    """SGD with momentum and *coupled* weight decay on every parameter, as PyTorch's SGD does.

    PyTorch adds `wd * p` to the gradient before the momentum buffer; `add_decayed_weights`
    placed before `sgd` does exactly that, BN and biases included (docs/recipes.md#optimiser).
    """
    return optax.chain(
        optax.add_decayed_weights(optim.weight_decay),
        optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov),
    )


def only_classifier(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """Applies `tx` to `params['classifier']` only; every other parameter stays frozen (cRT)."""

    def labels(params):
        return {k: ("train" if k == "classifier" else "frozen") for k in params}

    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
