"""ltkd_jax/methods/dukd.py: DU-KD with teacher-guided label smoothing (a reconstruction)."""

from __future__ import annotations

import pytest

from ltkd_jax.methods import dukd
from ltkd_jax.methods.dukd import dukd_loss, tgls_loss
from ltkd_jax.methods.logit_adjust import logit_adjusted_loss

from .properties import Case, DistillationProperties, SpecChecks
from .vectors import N, V, Y, Z, assert_close


def test_tv10_dukd():
    kw = dict(labels=Y, teacher_logits=V, class_counts=N, temperature=2.0)
    loss, parts = dukd_loss(Z, lam=1.0, **kw)
    assert_close(parts["dukd"], 0.395967)
    assert_close(parts["tgls"], 1.761747)  # lam = 1: the logit-adjusted CE
    assert_close(loss, 2.157714)
    assert_close(dukd_loss(Z, prior_placement="teacher", **kw)[1]["dukd"], 0.432998)
    assert_close(dukd_loss(Z, prior_placement="outside", **kw)[1]["dukd"], 0.587927)


def test_tv11_tgls():
    kw = dict(labels=Y, teacher_logits=V, class_counts=N)
    tgls, _ = tgls_loss(Z, lam=0.5, smoothing_temperature=1.0, **kw)
    assert_close(tgls, 1.164202)
    total, parts = dukd_loss(Z, lam=0.5, alpha=1.0, temperature=2.0, **kw)
    assert_close(parts["tgls"], 1.164202)
    assert_close(total, 1.560170)


def test_without_smoothing_and_kd_it_is_the_logit_adjusted_loss():
    la, _ = logit_adjusted_loss(Z, labels=Y, class_counts=N)
    kw = dict(labels=Y, teacher_logits=V, class_counts=N)
    assert_close(tgls_loss(Z, lam=1.0, **kw)[0], la)
    assert_close(dukd_loss(Z, lam=1.0, alpha=0.0, **kw)[0], la)


def test_unknown_prior_placement_is_rejected():
    with pytest.raises(ValueError, match="prior_placement"):
        dukd_loss(Z, labels=Y, teacher_logits=V, class_counts=N, prior_placement="x")


class TestLosses(DistillationProperties):
    cases = {
        "tgls": Case(tgls_loss, dict(logits=Z, labels=Y, teacher_logits=V, class_counts=N)),
        "dukd": Case(dukd_loss, dict(logits=Z, labels=Y, teacher_logits=V, class_counts=N)),
    }


class TestSpec(SpecChecks):
    name, module, loss_fn = "dukd", dukd, dukd_loss
    shared_fields = frozenset(
        {
            "temperature",
            "alpha",
            "tau",
            "lam",
            "smoothing_temperature",
            "balance_teacher_labels",
            "prior_placement",
        }
    )
    bad_values = {
        "prior_placement": "inside_",
        "lam": 1.5,
        "temperature": 0.0,
        "smoothing_temperature": -1.0,
        "tau": -1.0,
    }
    overrides = {
        "temperature": 3.0,
        "alpha": 0.5,
        "tau": 0.7,
        "lam": 0.8,
        "smoothing_temperature": 2.0,
        "balance_teacher_labels": True,
        "prior_placement": "outside",
    }

    def expected(self, c, task, student, labels, teachers, epoch):
        return dukd_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            class_counts=task.class_counts,
            temperature=c.temperature,
            alpha=c.alpha,
            tau=c.tau,
            lam=c.lam,
            smoothing_temperature=c.smoothing_temperature,
            balance_teacher_labels=c.balance_teacher_labels,
            prior_placement=c.prior_placement,
        )
