"""ltkd_jax/methods/ce.py: cross-entropy, the class-balanced loss (cb) and cRT."""

from __future__ import annotations

import numpy as np
import pytest

from ltkd_jax.config import checks, defaults
from ltkd_jax.methods import ce
from ltkd_jax.methods.ce import cross_entropy, weighted_cross_entropy
from ltkd_jax.methods.primitives import effective_number_weights

from .properties import Case, LossProperties, SpecChecks
from .vectors import CE_ZY, W_TV, W, Y, Z, assert_close


def test_tv1_cross_entropy():
    loss, parts = cross_entropy(Z, labels=Y)
    assert_close(loss, CE_ZY)
    assert_close(parts["ce"], CE_ZY)
    for i, expected in enumerate([0.241311, 1.653446]):
        assert_close(cross_entropy(Z[i : i + 1], labels=Y[i : i + 1])[0], expected)


def test_tv2_weighted_cross_entropy():
    loss, _ = weighted_cross_entropy(Z, labels=Y, class_weights=W)
    assert_close(loss, 1.585897)
    # The wrong reduction mean(w_y l) = 1.921182 must not be what we compute.
    per_sample = np.array([0.241311, 1.653446])
    assert_close(np.mean(np.array(W_TV)[Y] * per_sample), 1.921182)
    assert abs(float(loss) - 1.921182) > 0.1


def test_weighted_cross_entropy_with_unit_weights_is_cross_entropy():
    ce_value, _ = cross_entropy(Z, labels=Y)
    assert_close(weighted_cross_entropy(Z, labels=Y, class_weights=np.ones(3))[0], ce_value)


def test_logits_must_be_a_matrix():
    with pytest.raises(ValueError, match="shape"):
        cross_entropy(Z[0], labels=Y)


def test_crt_needs_a_finished_run_to_retrain():
    config = defaults.base_config("crt")
    with pytest.raises(ValueError, match="config.init.workdir"):
        checks.validate_config(config)


class TestLosses(LossProperties):
    cases = {
        "ce": Case(cross_entropy, dict(logits=Z, labels=Y)),
        "weighted_ce": Case(weighted_cross_entropy, dict(logits=Z, labels=Y, class_weights=W)),
    }


class _WeightedCe(SpecChecks):
    module = ce
    loss_fn = cross_entropy
    bad_values = {"class_weighting": "reweigh", "cb_beta": 1.0, "drw_epoch": -1}
    overrides = {"class_weighting": "drw", "drw_epoch": 3, "cb_beta": 0.999}
    epoch = 5  # after drw_epoch: the weights are on

    def expected(self, c, task, student, labels, teachers, epoch):
        weights = effective_number_weights(task.class_counts, beta=c.cb_beta)
        return weighted_cross_entropy(student.logits, labels=labels, class_weights=weights)


class TestCeSpec(_WeightedCe):
    name = "ce"


class TestCbSpec(_WeightedCe):
    name = "cb"
    # cb is the weighted CE: no weighting is a mistake, named with the fix.
    bad_values = {**_WeightedCe.bad_values, "class_weighting": "none"}


class TestCrtSpec(SpecChecks):
    name, module, loss_fn = "crt", ce, cross_entropy
    num_teachers = 0

    def expected(self, c, task, student, labels, teachers, epoch):
        return cross_entropy(student.logits, labels=labels)
