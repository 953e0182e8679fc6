"""ltkd_jax/methods/krdistill.py: KRDistill (a reconstruction)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from ltkd_jax import methods
from ltkd_jax.config import defaults
from ltkd_jax.methods import krdistill
from ltkd_jax.methods.krdistill import (
    krdistill_loss,
    krdistill_rectify_features,
    krdistill_rectify_logits,
)

from .properties import Case, DistillationProperties, SpecChecks
from .vectors import CE_ZY, FT, GFS, MU, N, V, Y, Z, assert_close


def test_tv12_krdistill_logits():
    r = krdistill_rectify_logits(V, labels=Y, class_counts=N)
    assert_close(r, [[3.223144, 2.832581, 1.218876], [3.818876, 2.632581, 4.223144]])
    loss, parts = krdistill_loss(Z, labels=Y, teacher_logits=V, class_counts=N, temperature=2.0)
    assert_close(parts["lrd"], 0.424930)
    assert_close(loss, CE_ZY + 0.424930)
    assert "rrd" not in parts


def test_tv17_krdistill_features():
    rectified = krdistill_rectify_features(FT, class_feature_means=MU, class_counts=N)
    assert_close(rectified, [[0.88, 0.42, 0.694667], [0.58, 0.72, 0.394667]])
    kw = dict(
        labels=Y,
        teacher_logits=V,
        class_counts=N,
        teacher_features=FT,
        class_feature_means=MU,
        temperature=2.0,
        beta=1.0,
    )
    loss, parts = krdistill_loss(Z, features=GFS, **kw)
    assert_close(parts["rrd"], 0.131295)
    assert_close(parts["lrd"], 0.424930)
    assert_close(loss, CE_ZY + 0.424930 + 0.131295)
    grad = jax.grad(lambda f: krdistill_loss(Z, features=f, **kw)[1]["rrd"])(
        jnp.asarray(GFS, jnp.float32)
    )
    assert_close(grad, [[0.02, -0.22, -0.294667], [-0.28, 0.08, 0.205333]])


def test_options():
    kw = dict(labels=Y, teacher_logits=V, class_counts=N)
    with pytest.raises(ValueError, match="beta"):
        krdistill_loss(Z, beta=1.0, **kw)
    # The swap only touches samples whose rectified argmax is wrong (here the second).
    no_swap = krdistill_rectify_logits(V, labels=Y, class_counts=N, swap=False)
    swapped = krdistill_rectify_logits(V, labels=Y, class_counts=N)
    assert_close(swapped[0], no_swap[0], rtol=0, atol=0)
    assert int(jnp.argmax(swapped[1])) == Y[1]


def test_the_regressor_maps_onto_the_teacher_width_and_only_with_the_feature_term():
    config = defaults.base_config("krdistill")
    assert methods.METHODS["krdistill"].student_parts(config, (96,)).side is None
    assert not methods.needs_of(config).feature_means
    config.loss.beta = 1.0
    parts = methods.METHODS["krdistill"].student_parts(config, (96,))
    assert parts.neck is None
    assert parts.side.features == 96
    assert methods.needs_of(config).feature_means


class TestLosses(DistillationProperties):
    cases = {
        "krdistill": Case(
            krdistill_loss,
            dict(
                logits=Z,
                labels=Y,
                teacher_logits=V,
                class_counts=N,
                features=GFS,
                teacher_features=FT,
                class_feature_means=MU,
            ),
            {"beta": 1.0},
        ),
    }


class TestSpec(SpecChecks):
    name, module, loss_fn = "krdistill", krdistill, krdistill_loss
    shared_fields = frozenset({"temperature", "alpha", "beta", "tau", "swap"})
    bad_values = {"temperature": 0.0, "beta": -1.0, "tau": -1.0}
    # beta > 0: the feature term, fed by the student's regressed features and the task's
    # teacher class-mean features.
    overrides = {"temperature": 2.0, "alpha": 0.5, "beta": 0.3, "tau": 0.5, "swap": False}

    def expected(self, c, task, student, labels, teachers, epoch):
        return krdistill_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            class_counts=task.class_counts,
            features=student.features,
            teacher_features=teachers[0].features,
            class_feature_means=task.teacher_feature_means,
            temperature=c.temperature,
            alpha=c.alpha,
            beta=c.beta,
            tau=c.tau,
            swap=c.swap,
        )
