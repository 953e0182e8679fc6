"""ltkd_jax/methods/kd.py: vanilla knowledge distillation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_configs import CONFIG_DIR, _load

from ltkd_jax.methods import kd
from ltkd_jax.methods.ce import cross_entropy, weighted_cross_entropy
from ltkd_jax.methods.kd import kd_loss
from ltkd_jax.methods.primitives import effective_number_weights

from .properties import Case, DistillationProperties, SpecChecks, make_inputs, method_loss
from .vectors import V, W, Y, Z, assert_close


def test_tv6_kd():
    loss, parts = kd_loss(Z, labels=Y, teacher_logits=V, temperature=2.0, alpha=1.0)
    assert_close(parts["kd"], 1.059948)
    assert_close(loss, 2.007327)
    weighted, _ = kd_loss(Z, labels=Y, teacher_logits=V, class_weights=W)
    assert_close(weighted, 2.645845)


def test_tv6_kd_gradient():
    # Gradient of T^2 KL_i w.r.t. z_i = T (p - q); the batch mean divides by B.
    def kd_part(z):
        return kd_loss(z, labels=Y, teacher_logits=V, temperature=2.0)[1]["kd"]

    grad = jax.grad(kd_part)(jnp.asarray(Z, jnp.float32)) * Z.shape[0]
    expected = [[-0.199749, 0.049769, 0.149980], [-0.940298, 0.674148, 0.266150]]
    assert_close(grad, expected)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_zero_kl_when_student_equals_teacher(temperature):
    kd_part = kd_loss(V, labels=Y, teacher_logits=V, temperature=temperature)[1]["kd"]
    assert float(kd_part) == pytest.approx(0.0, abs=1e-7)


def test_kd_config_is_the_bkd_repo_kd_row_on_cifar100():
    """The BKD repository's KD weights its CE term by class (effective numbers on CIFAR-100)."""
    _, config = _load(CONFIG_DIR / "kd_cifar.py")
    assert config.loss.class_weighting == "reweight"
    task, student, labels, teachers = make_inputs()
    _, parts = method_loss(config, task, student, labels, teachers, epoch=0)
    weights = effective_number_weights(task.class_counts)
    weighted, _ = weighted_cross_entropy(student.logits, labels=labels, class_weights=weights)
    plain, _ = cross_entropy(student.logits, labels=labels)
    np.testing.assert_allclose(parts["ce"], weighted, rtol=1e-6)
    assert abs(float(weighted) - float(plain)) > 1e-3  # the weighting really changes the CE


def test_kd_config_variants():
    _, c10 = _load(CONFIG_DIR / "kd_cifar.py", "dataset=cifar10")
    assert c10.loss.class_weighting == "drw"


@pytest.mark.parametrize(
    "arg", ["recipe=mdistiller", "teacher=resnet32x4,student=resnet8x4,recipe=mdistiller"]
)
def test_kd_config_under_the_mdistiller_recipe_is_mdistillers_kd(arg):
    """mdistiller/engine/cfg.py: CFG.KD.TEMPERATURE = 4, CFG.KD.LOSS.CE_WEIGHT = 0.1,
    CFG.KD.LOSS.KD_WEIGHT = 0.9, and an unweighted CE (its KD has no class weights)."""
    _, c = _load(CONFIG_DIR / "kd_cifar.py", arg)
    loss = c.loss
    assert (loss.temperature, loss.ce_weight, loss.alpha) == (4.0, 0.1, 0.9)
    assert loss.class_weighting == "none"
    _, bkd_recipe = _load(CONFIG_DIR / "kd_cifar.py")  # the BKD repository's KDLoss: T 2, 1 + 1
    assert (bkd_recipe.loss.temperature, bkd_recipe.loss.ce_weight, bkd_recipe.loss.alpha) == (
        2.0,
        1.0,
        1.0,
    )


class TestLosses(DistillationProperties):
    cases = {"kd": Case(kd_loss, dict(logits=Z, labels=Y, teacher_logits=V))}


class TestSpec(SpecChecks):
    name, module, loss_fn = "kd", kd, kd_loss
    shared_fields = frozenset({"temperature", "alpha", "ce_weight"})
    bad_values = {"temperature": 0.0, "alpha": -1.0, "ce_weight": -0.1}
    overrides = {"temperature": 3.0, "alpha": 0.7, "ce_weight": 0.5, "class_weighting": "reweight"}

    def expected(self, c, task, student, labels, teachers, epoch):
        return kd_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            temperature=c.temperature,
            alpha=c.alpha,
            ce_weight=c.ce_weight,
            class_weights=effective_number_weights(task.class_counts, beta=c.cb_beta),
        )
