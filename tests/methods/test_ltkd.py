"""ltkd_jax/methods/ltkd.py: LTKD (in part a reconstruction) and its group helpers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_configs import CONFIG_DIR, _load

from ltkd_jax.config import checks, defaults
from ltkd_jax.data import longtail
from ltkd_jax.methods import ltkd
from ltkd_jax.methods.kd import kd_loss
from ltkd_jax.methods.ltkd import (
    batch_rebalanced_group_log_masses,
    group_kl_decomposition,
    ltkd_loss,
    rebalanced_group_log_masses,
    thirds_groups,
)

from .properties import Case, DistillationProperties, SpecChecks, make_inputs, method_loss
from .vectors import G6, N6, V6, Y6, Z6, assert_close, cifar_lt_counts

LT6 = dict(labels=Y6, teacher_logits=V6, class_counts=N6, class_groups=G6)


def test_tv16_group_decomposition():
    d = group_kl_decomposition(Z6, teacher_logits=V6, class_groups=G6, temperature=4.0)
    q = np.exp(d["log_teacher_mass"])
    assert_close(q, [[0.465697, 0.320436, 0.213867], [0.451810, 0.299305, 0.248884]])
    p = np.exp(d["log_student_mass"])
    assert_close(p, [[0.389097, 0.333757, 0.277146], [0.362297, 0.311056, 0.326648]])
    assert_close(d["cross_kl"], [0.015205, 0.020564], rtol=1e-4)
    within = [[0.002702, 0.002796, 0.0], [0.013184, 0.011234, 0.000076]]
    assert_close(d["within_kl"], within, rtol=1e-4)
    vanilla = d["cross_kl"] + jnp.sum(q * d["within_kl"], axis=-1)
    assert_close(vanilla, [0.017359, 0.029901], rtol=1e-4)


def test_tv16_ltkd():
    kw = dict(LT6, temperature=4.0)
    loss, parts = ltkd_loss(Z6, **kw)
    assert_close(parts["ce"], 1.095364)
    assert_close(parts["cross"], 0.166110, rtol=1e-4)
    assert_close(parts["within"], 0.239931, rtol=1e-4)
    assert_close(parts["cross"] + parts["within"], 0.406041, rtol=1e-4)
    assert_close(loss, 1.501406, rtol=1e-4)
    loss_r2, parts_r2 = ltkd_loss(Z6, rebalance="r2", **kw)
    assert_close(parts_r2["cross"], 7.397823, rtol=1e-4)
    assert_close(loss_r2, 8.733118, rtol=1e-4)
    mean_w = ltkd_loss(Z6, within_weighting="mean", **kw)[1]["within"]
    assert_close(mean_w, 0.079977, rtol=1e-4)
    # Ablations (distillation parts, no CE).
    only_within = ltkd_loss(Z6, rebalance="none", **kw)[1]
    assert_close(only_within["cross"] + only_within["within"], 0.526079, rtol=1e-4)
    only_cross = ltkd_loss(Z6, within_weighting="teacher", **kw)[1]
    assert_close(only_cross["cross"] + only_cross["within"], 0.258046, rtol=1e-4)
    # Vanilla recovered: CE + KD = 1.473449.
    vanilla, parts_v = ltkd_loss(Z6, rebalance="none", within_weighting="teacher", **kw)
    assert_close(parts_v["cross"], 0.286148, rtol=1e-4)
    assert_close(parts_v["within"], 0.091936, rtol=1e-4)
    assert_close(vanilla, 1.473449, rtol=1e-4)


def test_tv16_rebalanced_targets():
    kw = dict(class_groups=G6, class_counts=N6, temperature=4.0)
    r1 = np.exp(rebalanced_group_log_masses(V6, rebalance="r1", **kw))
    assert_close(r1, [[0.321255, 0.338445, 0.340300], [0.310795, 0.310878, 0.378327]])
    r2 = np.exp(rebalanced_group_log_masses(V6, rebalance="r2", **kw))
    assert_close(r2, [[0.062808, 0.216086, 0.721106], [0.055298, 0.183163, 0.761539]])


def test_tv16_ltkd_gradients():
    kw = dict(LT6, temperature=4.0)

    @jax.jit
    def grads(z):
        return {
            k: jax.grad(lambda x, k=k: ltkd_loss(x, **kw)[1][k])(z) for k in ("within", "cross")
        }

    g = grads(jnp.asarray(Z6, jnp.float32))
    expected_within = [
        [-0.072393, 0.072393, -0.074395, 0.074395, 0, 0],
        [-0.161986, 0.161986, 0.149696, -0.149696, -0.012098, 0.012098],
    ]
    assert_close(g["within"], expected_within, rtol=1e-4)
    expected_cross = [
        [0.077942, 0.057741, -0.004105, -0.005271, -0.054524, -0.071783],
        [0.045732, 0.057271, 0.000192, 0.000162, -0.060631, -0.042726],
    ]
    assert_close(g["cross"], expected_cross, rtol=1e-4)


def test_batch_rebalancing_by_hand():
    # Three classes, one per group, T = 1: the teacher's group masses are its softmax.
    q = np.array([[0.7, 0.2, 0.1], [0.5, 0.3, 0.2]])  # head-heavy: batch masses 1.2, 0.5, 0.3
    scale = (2.0 / 3.0) / q.sum(0)  # each batch mass moved to the uniform 2/3
    expected = q * scale / (q * scale).sum(1, keepdims=True)
    got = batch_rebalanced_group_log_masses(
        np.log(q), class_groups=np.array([0, 1, 2]), temperature=1.0
    )
    assert_close(np.exp(got), expected)
    # Same through the generic entry point; and the batch masses move toward uniform.
    via = rebalanced_group_log_masses(
        np.log(q), class_groups=np.array([0, 1, 2]), temperature=1.0, rebalance="batch"
    )
    assert_close(np.exp(via), expected)
    before = np.abs(q.mean(0) - 1 / 3).max()
    after = np.abs(np.exp(got).mean(0) - 1 / 3).max()
    assert after < 0.5 * before


def test_batch_rebalancing_identical_rows_become_uniform():
    v = np.tile(V6[:1], (4, 1))  # a head-heavy teacher, the same row four times
    q = np.exp(rebalanced_group_log_masses(V6[:1], class_groups=G6, rebalance="none"))
    assert q[0, 0] > 0.4  # head-heavy indeed
    qt = np.exp(batch_rebalanced_group_log_masses(v, class_groups=G6))
    assert_close(qt, np.full((4, 3), 1 / 3))


def test_batch_rebalancing_keeps_empty_groups_empty():
    qt = np.exp(
        batch_rebalanced_group_log_masses(
            V6, class_groups=np.array([0, 0, 1, 1, 1, 3]), num_groups=4
        )
    )
    assert_close(qt[:, 2], [0.0, 0.0])
    assert_close(qt.sum(1), [1.0, 1.0])


def test_decomposition_identity_float64():
    """KL(q||p) = KL(Q||P) + sum_k Q_k KL(qh^k||ph^k), with odd groups, in float64."""
    rng = np.random.default_rng(0)
    z, v = 3.0 * rng.normal(size=(5, 7)), 3.0 * rng.normal(size=(5, 7))
    labels = np.zeros(5, int)
    groups = np.array([0, 0, 1, 1, 1, 3, 0])  # group 2 empty, group 3 of size 1
    common = dict(teacher_logits=v, class_groups=groups, num_groups=4)

    @jax.jit
    def terms(temperature):
        d = group_kl_decomposition(z, temperature=temperature, **common)
        kd = kd_loss(z, labels=labels, teacher_logits=v, temperature=temperature)[1]
        lt = ltkd_loss(
            z,
            labels=labels,
            temperature=temperature,
            rebalance="none",
            within_weighting="teacher",
            **common,
        )[1]
        return d, kd["kd"], lt["cross"] + lt["within"]

    with jax.enable_x64(True):
        for temperature in (1.0, 4.0):
            d, kd, lt = terms(jnp.float64(temperature))
            q = jnp.exp(d["log_teacher_mass"])
            per_sample = d["cross_kl"] + jnp.sum(q * d["within_kl"], axis=-1)
            assert_close(temperature**2 * jnp.mean(per_sample), kd, rtol=1e-12, atol=1e-14)
            assert_close(lt, kd, rtol=1e-12, atol=1e-14)
            assert_close(d["within_kl"][:, 2:], 0.0, rtol=0, atol=1e-15)  # empty and size-1
            assert_close(q[:, 2], 0.0, rtol=0, atol=1e-300)


def test_default_groups_are_shot_groups():
    kw = dict(labels=Y6, teacher_logits=V6, class_counts=N6)
    default, _ = ltkd_loss(Z6, **kw)
    explicit, _ = ltkd_loss(Z6, class_groups=longtail.shot_groups(N6), **kw)
    assert_close(default, explicit, rtol=0, atol=0)
    with pytest.raises(ValueError, match="class_counts"):
        ltkd_loss(Z6, labels=Y6, teacher_logits=V6, class_groups=G6)


def test_groups():
    np.testing.assert_array_equal(
        longtail.shot_groups(np.array([101, 100, 20, 19, 1])), [0, 1, 1, 2, 2]
    )
    counts = cifar_lt_counts(500, 100, 100)
    assert np.bincount(np.asarray(longtail.shot_groups(counts)), minlength=3).tolist() == [
        35,
        35,
        30,
    ]
    assert np.bincount(np.asarray(thirds_groups(counts)), minlength=3).tolist() == [33, 33, 34]
    np.testing.assert_array_equal(thirds_groups(np.array([5, 50, 500])), [2, 1, 0])
    np.testing.assert_array_equal(longtail.shot_groups(N6), [0, 1, 1, 1, 2, 2])


def test_unknown_options_are_rejected():
    kw = dict(labels=Y6, teacher_logits=V6, class_counts=N6)
    with pytest.raises(ValueError, match="rebalance"):
        ltkd_loss(Z6, rebalance="r3", **kw)
    with pytest.raises(ValueError, match="within_weighting"):
        ltkd_loss(Z6, within_weighting="x", **kw)


def test_defaults_follow_the_paper_digest():
    _, config = _load(CONFIG_DIR / "ltkd_cifar.py")
    assert (config.loss.rebalance, config.loss.groups) == ("batch", "tail33")
    _, pair = _load(
        CONFIG_DIR / "ltkd_cifar.py", "teacher=resnet32x4,student=resnet8x4,recipe=mdistiller"
    )
    assert pair.data.eval_groups == "tail33"  # the tail reported as the paper does
    assert (pair.model.name, pair.teacher.model, pair.num_epochs, pair.batch_size) == (
        "resnet8x4",
        "resnet32x4",
        240,
        64,
    )


def test_unknown_choices_fail_in_validate_config():
    _, config = _load(CONFIG_DIR / "ltkd_cifar.py")
    for field, value in (("rebalance", "bacth"), ("groups", "tail3")):
        bad = config.copy_and_resolve_references()
        bad.loss[field] = value
        with pytest.raises(ValueError, match=f"config.loss.{field}"):
            checks.validate_config(bad)


ODD_GROUPS = np.array([0, 0, 1, 1, 1, 3])  # group 2 empty, group 3 of size 1


class TestLosses(DistillationProperties):
    cases = {
        "ltkd": Case(ltkd_loss, dict(logits=Z6, **LT6), jit_grad_check=True),
        "ltkd_batch": Case(
            ltkd_loss, dict(logits=Z6, **LT6), {"rebalance": "batch"}, jit_grad_check=True
        ),
        # The batch rule with an empty group (it must keep mass 0) and a group of size 1.
        "ltkd_batch_odd_groups": Case(
            ltkd_loss,
            dict(logits=Z6, **{**LT6, "class_groups": ODD_GROUPS}),
            {"num_groups": 4, "rebalance": "batch"},
            jit_grad_check=True,
        ),
        # R2 with "mean" weights on four groups, one empty and one of size 1.
        "ltkd_r2_odd_groups": Case(
            ltkd_loss,
            dict(logits=Z6, **{**LT6, "class_groups": ODD_GROUPS}),
            {"num_groups": 4, "rebalance": "r2", "within_weighting": "mean"},
            jit_grad_check=True,
        ),
    }


class TestSpec(SpecChecks):
    name, module, loss_fn = "ltkd", ltkd, ltkd_loss
    shared_fields = frozenset(
        {"temperature", "alpha", "beta", "ce_weight", "tau", "rebalance", "within_weighting"}
    )
    # The function keeps r1 so the reference values of test_tv16_ltkd stay valid; the method
    # runs the paper's batch-level rule. (Likewise `groups`: the function's default, with no
    # class_groups, is the shot groups; the method's is tail33. Different names, not compared.)
    default_differs = {"rebalance": "function r1 for the reference values; method batch"}
    bad_values = {
        "rebalance": "bacth",
        "groups": "tail3",
        "within_weighting": "median",
        "temperature": 0.0,
        "ce_weight": -1.0,
    }
    overrides = {
        "temperature": 2.0,
        "alpha": 0.5,
        "beta": 2.0,
        "ce_weight": 0.7,
        "tau": 0.5,
        "rebalance": "r2",
        "groups": "thirds",
        "within_weighting": "teacher",
    }

    def expected(self, c, task, student, labels, teachers, epoch):
        return ltkd_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            class_counts=task.class_counts,
            class_groups=thirds_groups(task.class_counts),
            temperature=c.temperature,
            alpha=c.alpha,
            beta=c.beta,
            tau=c.tau,
            ce_weight=c.ce_weight,
            rebalance=c.rebalance,
            within_weighting=c.within_weighting,
        )


@pytest.mark.parametrize("groups", ["tail33", "shot"])
def test_make_uses_the_configured_groups(groups):
    config = defaults.base_config("ltkd")
    config.loss.groups = groups
    task, student, labels, teachers = make_inputs()
    got = method_loss(config, task, student, labels, teachers, epoch=0)
    class_groups = (
        longtail.tail33_groups(task.class_counts) if groups == "tail33" else task.class_groups
    )
    # On these six classes the two rules differ, so a method ignoring the field fails.
    assert not np.array_equal(longtail.tail33_groups(task.class_counts), task.class_groups)
    want = ltkd_loss(
        student.logits,
        labels=labels,
        teacher_logits=teachers[0].logits,
        class_groups=class_groups,
        rebalance="batch",
    )
    jax.tree.map(lambda a, b: assert_close(a, b, rtol=1e-6, atol=1e-7), got, want)
