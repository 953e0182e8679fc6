"""ltkd_jax/methods/logit_adjust.py: the logit-adjusted loss."""

from __future__ import annotations

import numpy as np

from ltkd_jax.methods import logit_adjust
from ltkd_jax.methods.ce import cross_entropy
from ltkd_jax.methods.logit_adjust import logit_adjusted_loss

from .properties import Case, LossProperties, SpecChecks
from .vectors import N, Y, Z, assert_close


def test_tv5_logit_adjusted_loss():
    assert_close(logit_adjusted_loss(Z, labels=Y, class_counts=N)[0], 1.761747)
    assert_close(logit_adjusted_loss(Z, labels=Y, class_counts=N, tau=2.0)[0], 3.019915)


def test_uniform_counts_give_cross_entropy():
    ce, _ = cross_entropy(Z, labels=Y)
    uniform = np.array([7, 7, 7])
    assert_close(logit_adjusted_loss(Z, labels=Y, class_counts=uniform)[0], ce)


class TestLosses(LossProperties):
    cases = {
        "logit_adjusted": Case(logit_adjusted_loss, dict(logits=Z, labels=Y, class_counts=N)),
    }


class TestSpec(SpecChecks):
    name, module, loss_fn = "logit_adjust", logit_adjust, logit_adjusted_loss
    shared_fields = frozenset({"tau"})
    bad_values = {"tau": -0.5}
    overrides = {"tau": 1.5}
    num_teachers = 0

    def expected(self, c, task, student, labels, teachers, epoch):
        return logit_adjusted_loss(
            student.logits, labels=labels, class_counts=task.class_counts, tau=c.tau
        )
