"""ltkd_jax/methods/dkd.py: decoupled knowledge distillation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_configs import CONFIG_DIR, _load

from ltkd_jax import methods
from ltkd_jax.config import defaults
from ltkd_jax.methods import dkd
from ltkd_jax.methods.ce import cross_entropy
from ltkd_jax.methods.dkd import dkd_loss

from .properties import Case, DistillationProperties, SpecChecks
from .vectors import CE_ZY, V, Y, Z, assert_close

DISTILL_ZVY = 10.725944  # TCKD + 8 NCKD at T = 4 on the shared inputs


def test_tv8_dkd():
    loss, parts = dkd_loss(Z, labels=Y, teacher_logits=V, temperature=4.0)
    assert_close(parts["tckd"], 0.175064)
    assert_close(parts["nckd"], 1.318860)
    assert_close(parts["tckd"] + 8.0 * parts["nckd"], DISTILL_ZVY)
    assert_close(loss, 11.673323)
    # Warm-up factor min(epoch / warmup, 1) on the distillation part only.
    half, _ = dkd_loss(Z, labels=Y, teacher_logits=V, epoch=10, warmup=20)
    assert_close(half, CE_ZY + 0.5 * DISTILL_ZVY)
    late, _ = dkd_loss(Z, labels=Y, teacher_logits=V, epoch=35)
    assert_close(late, 11.673323)


def test_tckd_is_binary_kl_and_epoch_may_be_traced():
    """TCKD = T^2 KL([q_g, 1-q_g] || [p_g, 1-p_g]), computed naively; epoch may be traced."""
    t = 4.0
    p, q = jax.nn.softmax(Z / t), jax.nn.softmax(V / t)
    pg, qg = p[np.arange(2), Y], q[np.arange(2), Y]
    naive = qg * np.log(qg / pg) + (1 - qg) * np.log((1 - qg) / (1 - pg))
    _, parts = dkd_loss(Z, labels=Y, teacher_logits=V, temperature=t)
    assert_close(parts["tckd"], t**2 * np.mean(naive))
    step = jax.jit(lambda e: dkd_loss(Z, labels=Y, teacher_logits=V, epoch=e)[0])
    assert_close(step(jnp.asarray(5)), CE_ZY + 0.25 * DISTILL_ZVY)
    assert_close(step(jnp.asarray(40)), 11.673323)


@pytest.mark.parametrize(
    "arg, beta",
    [
        # mdistiller configs/cifar100/dkd/res56_res20.yaml and res110_res32.yaml: BETA 2.0; a
        # ResNet-32 teacher is of the same family (no res32_res32.yaml exists).
        ("", 2.0),
        ("teacher=resnet56,student=resnet20,recipe=mdistiller", 2.0),
        ("teacher=resnet110,student=resnet32,recipe=mdistiller", 2.0),
        ("dataset=cifar10", 2.0),
        # res32x4_res8x4.yaml: BETA 8.0
        ("teacher=resnet32x4,student=resnet8x4,recipe=mdistiller", 8.0),
        ("teacher=resnet32x4,student=resnet8x4", 8.0),
    ],
)
def test_dkd_config_takes_mdistillers_values_for_the_teacher(arg, beta):
    """Every mdistiller CIFAR-100 DKD yaml above: CE_WEIGHT 1.0, ALPHA 1.0, T 4.0, WARMUP 20;
    BETA by pair."""
    _, c = _load(CONFIG_DIR / "dkd_cifar.py", arg or None)
    loss = c.loss
    assert (loss.ce_weight, loss.alpha, loss.temperature, loss.warmup_epochs) == (1.0, 1.0, 4.0, 20)
    assert loss.beta == beta


@pytest.mark.slow  # one jit per epoch value
def test_distillation_term_warms_up_over_epochs():
    counts = np.array([50, 20, 5])
    task = methods.Task(class_counts=counts, class_groups=np.zeros(3, np.int32))
    config = defaults.base_config("dkd")
    method = methods.make(config, task)
    rng = np.random.default_rng(0)
    student = methods.ModelOutput(rng.normal(size=(4, 3)).astype(np.float32), np.zeros((4, 2)))
    teacher = methods.ModelOutput(rng.normal(size=(4, 3)).astype(np.float32), np.zeros((4, 2)))
    labels = np.array([0, 1, 2, 0])
    ce, _ = cross_entropy(student.logits, labels=labels)
    ce = float(ce)
    kd = {  # the distillation part at 0-based epochs; mdistiller's factor min((e + 1) / 20, 1)
        e: float(method.loss(student, labels, (teacher,), method.epoch_context(e))[0]) - ce
        for e in (0, 9, 19, 39)
    }
    assert kd[19] > 0
    np.testing.assert_allclose(kd[0], kd[19] / 20, rtol=1e-4)
    np.testing.assert_allclose(kd[9], kd[19] / 2, rtol=1e-4)
    np.testing.assert_allclose(kd[39], kd[19], rtol=1e-6)  # full weight from epoch 20 on


class TestLosses(DistillationProperties):
    cases = {
        "dkd": Case(
            dkd_loss,
            dict(logits=Z, labels=Y, teacher_logits=V, epoch=np.array(10)),
            jit_grad_check=True,
        )
    }


class TestSpec(SpecChecks):
    name, module, loss_fn = "dkd", dkd, dkd_loss
    shared_fields = frozenset({"temperature", "alpha", "beta", "ce_weight", "warmup_epochs"})
    keyword_of = {"warmup_epochs": "warmup"}
    bad_values = {"temperature": 0.0, "warmup_epochs": 0, "beta": -8.0}
    overrides = {
        "temperature": 2.0,
        "alpha": 0.5,
        "beta": 4.0,
        "ce_weight": 0.3,
        "warmup_epochs": 10,
    }
    epoch = 3  # inside the warm-up: factor (3 + 1) / 10

    def expected(self, c, task, student, labels, teachers, epoch):
        return dkd_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            temperature=c.temperature,
            alpha=c.alpha,
            beta=c.beta,
            ce_weight=c.ce_weight,
            epoch=epoch + 1,  # mdistiller counts epochs from 1
            warmup=c.warmup_epochs,
        )
