"""ltkd_jax/methods/bkd.py: balanced knowledge distillation."""

from __future__ import annotations

import numpy as np
import pytest

from ltkd_jax import methods
from ltkd_jax.config import defaults
from ltkd_jax.methods import bkd
from ltkd_jax.methods.bkd import bkd_loss
from ltkd_jax.methods.kd import kd_loss
from ltkd_jax.methods.primitives import effective_number_weights

from .properties import Case, DistillationProperties, SpecChecks
from .vectors import V, W, Y, Z, assert_close


def test_tv7_bkd():
    loss, parts = bkd_loss(Z, labels=Y, teacher_logits=V, class_weights=W)
    assert_close(parts["kd"], 1.297383)
    assert_close(loss, 2.244762)
    # The scale of w cancels in the renormalisation.
    unnormalised, _ = bkd_loss(Z, labels=Y, teacher_logits=V, class_weights=W * 7.3)
    assert_close(unnormalised, 2.244762)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 8.0])
def test_zero_kl_when_student_equals_teacher_with_uniform_weights(temperature):
    kw = dict(labels=Y, teacher_logits=V, temperature=temperature)
    for uniform in (np.ones(3), np.full(3, 3.7)):
        # log w shifts every teacher logit equally; float32 rounding of that shift is the only
        # residual, so compare the KL itself (kd / T^2).
        kd_part = bkd_loss(V, class_weights=uniform, **kw)[1]["kd"]
        assert float(kd_part) / temperature**2 == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_uniform_weights_give_kd(temperature):
    kw = dict(labels=Y, teacher_logits=V, temperature=temperature, alpha=0.7)
    kd, _ = kd_loss(Z, **kw)
    for uniform in (np.ones(3), np.full(3, 0.25)):
        assert_close(bkd_loss(Z, class_weights=uniform, **kw)[0], kd, rtol=1e-6)


def test_fixed_point():
    """KL = 0 at z = v + T log w + const."""
    z = V + 2.0 * np.log(W) + 1.5
    kd = bkd_loss(z, labels=Y, teacher_logits=V, class_weights=W, temperature=2.0)[1]
    assert float(kd["kd"]) == pytest.approx(0.0, abs=1e-6)


def test_epoch_dependent_weights_switch_at_the_drw_epoch():
    counts = np.array([500, 100, 20, 5])
    task = methods.Task(class_counts=counts, class_groups=np.zeros(4, np.int32))
    config = defaults.base_config("bkd")
    config.loss.class_weighting = "drw"
    method = methods.make(config, task)
    np.testing.assert_array_equal(method.epoch_context(159)["class_weights"], np.ones(4))
    np.testing.assert_allclose(
        method.epoch_context(160)["class_weights"], effective_number_weights(counts)
    )
    config.loss.class_weighting = "reweight"  # CIFAR-100 rule: weighted from epoch 0
    np.testing.assert_allclose(
        methods.make(config, task).epoch_context(0)["class_weights"],
        effective_number_weights(counts),
    )


class TestLosses(DistillationProperties):
    cases = {"bkd": Case(bkd_loss, dict(logits=Z, labels=Y, teacher_logits=V, class_weights=W))}


class TestSpec(SpecChecks):
    name, module, loss_fn = "bkd", bkd, bkd_loss
    shared_fields = frozenset({"temperature", "alpha"})
    bad_values = {"temperature": -2.0, "alpha": -1.0, "class_weighting": "balanced"}
    overrides = {"temperature": 3.0, "alpha": 0.5, "cb_beta": 0.999}

    def expected(self, c, task, student, labels, teachers, epoch):
        return bkd_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            class_weights=effective_number_weights(task.class_counts, beta=c.cb_beta),
            temperature=c.temperature,
            alpha=c.alpha,
        )
