"""ltkd_jax/methods/cbd.py: class-balanced distillation (stage 2), one teacher or an ensemble."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_configs import CONFIG_DIR, _load

from ltkd_jax import methods, models
from ltkd_jax.config import defaults
from ltkd_jax.methods import cbd
from ltkd_jax.methods.cbd import cbd_loss
from ltkd_jax.runs import teachers as teacher_stage
from ltkd_jax.training import optim

from .properties import Case, DistillationProperties, SpecChecks
from .vectors import F_S, T1, T2, Y, Z, assert_close


def test_tv9_cbd():
    loss, parts = cbd_loss(Z, labels=Y, features=F_S, teacher_features=(T1, T2))
    assert_close(parts["feature"], 0.267037)
    assert_close(loss, 11.249911)


def test_any_number_of_teachers():
    one = cbd_loss(Z, labels=Y, features=F_S[:, :2], teacher_features=T1)[0]
    assert_close(one, cbd_loss(Z, labels=Y, features=F_S[:, :2], teacher_features=[T1])[0])
    t3 = np.array([[0.0, 1.0, 1.0], [3.0, -1.0, 0.5]])
    f6 = np.concatenate([F_S, F_S[:, :3]], axis=-1)[:, :7]
    three, parts = cbd_loss(Z, labels=Y, features=f6, teacher_features=(T1, T2, t3))
    assert np.isfinite(three) and 0.0 <= float(parts["feature"]) <= 2.0
    # Each teacher is normalised on its own: rescaling one teacher changes nothing.
    scaled = cbd_loss(Z, labels=Y, features=f6, teacher_features=(10 * T1, T2, 0.1 * t3))
    assert_close(scaled[0], three, rtol=1e-6)
    with pytest.raises(ValueError, match="width"):
        cbd_loss(Z, labels=Y, features=F_S, teacher_features=(T1,))


@pytest.mark.parametrize("name", ["cbd", "cbd_ensemble"])
def test_the_projection_is_as_wide_as_the_teachers_together(name):
    config = defaults.base_config(name)
    parts = methods.METHODS[name].student_parts(config, (64, 128))
    assert parts.side is None
    assert parts.neck.features == 64 + 128


def test_the_projection_is_glorot_uniform_with_zero_bias_and_relu():
    config = defaults.base_config("cbd")
    neck = methods.METHODS["cbd"].student_parts(config, (256,)).neck
    x = jax.random.normal(jax.random.key(1), (8, 64))
    params = neck.init(jax.random.key(0), x)["params"]
    kernel, bias = params["kernel"], params["bias"]
    assert kernel.shape == (64, 256)
    np.testing.assert_array_equal(bias, 0.0)
    fan_in, fan_out = kernel.shape
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    assert np.abs(kernel).max() <= limit
    # Uniform on [-limit, limit] has std limit / sqrt(3); Kaiming-normal would be ~2.4x wider.
    np.testing.assert_allclose(np.std(kernel), limit / np.sqrt(3), rtol=0.1)
    np.testing.assert_allclose(neck.apply({"params": params}, x), jax.nn.relu(x @ kernel))


@pytest.mark.parametrize(
    "arg, official_wd",
    [("dataset=imagenet_lt", 5e-4), ("dataset=inat2018", 2e-4), ("teachers=4", 5e-4)],
)
def test_effective_weight_decay_is_half_the_official_config(arg, official_wd):
    # Official: loss += wd * 0.5 * tf.nn.l2_loss(theta) = wd / 4 * sum(theta^2), so the
    # gradient added to every variable is wd / 2 * theta.
    _, config = _load(CONFIG_DIR / "cbd_large_scale.py", arg)
    tx = optim.make_optimizer(config.optim, optax.constant_schedule(1.0))
    theta = {"w": jnp.array([1.0, -2.0, 0.5])}
    updates, _ = tx.update({"w": jnp.zeros(3)}, tx.init(theta), theta)
    np.testing.assert_allclose(updates["w"], -(official_wd / 2) * theta["w"], rtol=1e-6)
    # The stage-1 teachers are built from the same optimiser section.
    assert teacher_stage.teacher_config(config, 0).optim.weight_decay == config.optim.weight_decay


@pytest.mark.slow  # builds and initialises a whole model
def test_resnet50_recipe_zero_inits_the_last_batchnorm_of_each_block():
    _, config = _load(CONFIG_DIR / "cbd_large_scale.py")
    assert config.model.zero_init_residual
    model = models.get_model("resnet10", 5, zero_init_residual=True)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)["params"]
    blocks = [k for k in params if k.startswith("BasicBlock")]
    assert blocks
    for block in blocks:
        bns = sorted(k for k in params[block] if k.startswith("BatchNorm"))
        np.testing.assert_array_equal(params[block][bns[-1]]["scale"], 0.0)
        np.testing.assert_array_equal(params[block][bns[0]]["scale"], 1.0)


class TestLosses(DistillationProperties):
    cases = {
        "cbd": Case(cbd_loss, dict(logits=Z, labels=Y, features=F_S, teacher_features=(T1, T2))),
    }


class _CbdSpec(SpecChecks):
    module, loss_fn = cbd, cbd_loss
    shared_fields = frozenset({"alpha", "beta"})
    bad_values = {"alpha": 1.5, "beta": -1.0}
    overrides = {"alpha": 0.25, "beta": 10.0}

    def expected(self, c, task, student, labels, teachers, epoch):
        return cbd_loss(
            student.logits,
            labels=labels,
            features=student.features,
            teacher_features=tuple(t.features for t in teachers),
            alpha=c.alpha,
            beta=c.beta,
        )


class TestCbdSpec(_CbdSpec):
    name = "cbd"


class TestCbdEnsembleSpec(_CbdSpec):
    name = "cbd_ensemble"
    num_teachers = 2  # the student's features are as wide as both teachers' together
