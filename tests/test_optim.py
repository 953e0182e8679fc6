"""Learning-rate schedules and the coupled weight decay of the BKD recipe."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ltkd_jax.config import defaults
from ltkd_jax.training import optim


def test_bkd_step_schedule_matches_the_bkd_repo():
    # adjust_learning_rate of BKD's train_student.py at epochs 0, 1, 4, 5, 159, 160, 179, 180, 199.
    steps_per_epoch = 7
    schedule = optim.make_schedule(defaults.base_config().optim, steps_per_epoch, 200)
    epochs = [0, 1, 4, 5, 159, 160, 179, 180, 199]
    expected = [0.02, 0.04, 0.1, 0.1, 0.1, 0.001, 0.001, 1e-5, 1e-5]
    # Constant within an epoch: check its first and last step.
    for e, lr in zip(epochs, expected, strict=True):
        for step in (e * steps_per_epoch, (e + 1) * steps_per_epoch - 1):
            np.testing.assert_allclose(float(schedule(step)), lr, rtol=1e-6)


def cosine_closed_form(t: int, base: float, warmup: int, total: int) -> float:
    """docs/recipes.md: linear warm-up from 0 over `warmup` steps, then
    base * (1 + cos(pi * (t - warmup) / (total - warmup))) / 2, reaching 0 at `total`."""
    if t < warmup:
        return base * t / warmup
    return base * 0.5 * (1 + np.cos(np.pi * (t - warmup) / (total - warmup)))


@pytest.mark.parametrize("warmup_epochs", [0, 2])
def test_cosine_schedule_follows_the_closed_form(warmup_epochs):
    c = defaults.base_config().optim
    c.schedule, c.warmup_epochs = "cosine", warmup_epochs
    steps_per_epoch, num_epochs = 10, 20
    schedule = optim.make_schedule(c, steps_per_epoch, num_epochs)
    warmup, total = steps_per_epoch * warmup_epochs, steps_per_epoch * num_epochs
    middle = warmup + (total - warmup) // 2  # half-way through the decay: lr / 2
    checked = [0, warmup // 2, warmup, middle, total - 1]
    # optax evaluates cos(pi * t / T) in float32: a few roundings of numbers of order 1,
    # scaled by lr (the value at the last step is ~1e-5 lr, far above this).
    atol = 8 * np.finfo(np.float32).eps * c.lr
    for t in checked:
        expected = cosine_closed_form(t, c.lr, warmup, total)
        np.testing.assert_allclose(float(schedule(t)), expected, rtol=0, atol=atol, err_msg=t)
    np.testing.assert_allclose(float(schedule(middle)), c.lr / 2, rtol=1e-6)
    assert float(schedule(total - 1)) > 0  # still learning at the last step


def test_weight_decay_is_coupled_like_pytorch_sgd():
    # PyTorch SGD: buf = m * buf + (g + wd * p); p -= lr * buf.
    c = defaults.base_config().optim
    tx = optim.make_optimizer(c, optax.constant_schedule(0.1))
    params = {"w": jnp.array([1.0, -2.0]), "bn_scale": jnp.array([0.5])}
    grads = {"w": jnp.array([0.3, 0.1]), "bn_scale": jnp.array([0.0])}
    state = tx.init(params)
    p, buf = {k: np.asarray(v) for k, v in params.items()}, None
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        g = {k: np.asarray(grads[k]) + c.weight_decay * p[k] for k in p}
        buf = g if buf is None else {k: c.momentum * buf[k] + g[k] for k in p}
        p = {k: p[k] - 0.1 * buf[k] for k in p}
    for k in p:  # BN parameters are decayed too (docs/recipes.md#optimiser)
        np.testing.assert_allclose(params[k], p[k], rtol=1e-6)


def test_unknown_schedule_names_the_field():
    c = defaults.base_config().optim
    c.schedule = "linear"
    with pytest.raises(ValueError, match="config.optim.schedule"):
        optim.make_schedule(c, 10, 10)
