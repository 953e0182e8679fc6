"""ltkd_jax/methods/ldam_drw.py: LDAM with deferred re-weighting."""

from __future__ import annotations

import jax
import pytest

from ltkd_jax.config import checks, defaults
from ltkd_jax.methods import ldam_drw
from ltkd_jax.methods.ce import cross_entropy
from ltkd_jax.methods.ldam_drw import ldam_loss, ldam_margins
from ltkd_jax.methods.primitives import effective_number_weights

from .properties import Case, LossProperties, SpecChecks, make_inputs, method_loss
from .vectors import COS, N, W, Y, Z, assert_close


def test_tv4_ldam():
    assert_close(ldam_margins(N), [0.236435, 0.353553, 0.5])
    assert_close(ldam_loss(COS, labels=Y, class_counts=N)[0], 9.003961)
    for i, expected in enumerate([0.007369, 18.000553]):
        single = ldam_loss(COS[i : i + 1], labels=Y[i : i + 1], class_counts=N)[0]
        assert_close(single, expected)


def test_without_margin_and_scale_it_is_cross_entropy():
    ce, _ = cross_entropy(Z, labels=Y)
    assert_close(ldam_loss(Z, labels=Y, class_counts=N, max_margin=0.0, scale=1.0)[0], ce)


def test_brings_the_normed_head_and_needs_it():
    config = defaults.base_config("ldam_drw")
    assert config.model.head == "normed"  # the Spec's head, on any recipe
    config.model.head = "linear"
    with pytest.raises(ValueError, match="--config.model.head=normed"):
        checks.validate_config(config)


def test_the_ce_is_unweighted_before_the_drw_epoch():
    config = defaults.base_config("ldam_drw")
    config.loss.drw_epoch = 2
    task, student, labels, teachers = make_inputs(num_teachers=0)
    before = method_loss(config, task, student, labels, teachers, epoch=1)
    plain = ldam_loss(student.logits, labels=labels, class_counts=task.class_counts)
    jax.tree.map(lambda a, b: assert_close(a, b, rtol=1e-6, atol=1e-7), before, plain)
    after, _ = method_loss(config, task, student, labels, teachers, epoch=2)
    assert abs(float(after) - float(plain[0])) > 1e-3


class TestLosses(LossProperties):
    cases = {
        "ldam_drw": Case(ldam_loss, dict(logits=COS, labels=Y, class_counts=N, class_weights=W)),
    }


class TestSpec(SpecChecks):
    name, module, loss_fn = "ldam_drw", ldam_drw, ldam_loss
    shared_fields = frozenset({"max_margin", "scale"})
    bad_values = {"max_margin": 0.0, "scale": -30.0, "drw_epoch": -1}
    overrides = {"max_margin": 0.3, "scale": 10.0, "drw_epoch": 2}
    epoch = 2  # the first epoch of the re-weighting
    num_teachers = 0

    def expected(self, c, task, student, labels, teachers, epoch):
        return ldam_loss(
            student.logits,
            labels=labels,
            class_counts=task.class_counts,
            max_margin=c.max_margin,
            scale=c.scale,
            class_weights=effective_number_weights(task.class_counts, beta=c.cb_beta),
        )
