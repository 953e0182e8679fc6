"""ltkd_jax/methods/focal.py: the focal loss."""

from __future__ import annotations

from ltkd_jax.methods import focal
from ltkd_jax.methods.ce import cross_entropy
from ltkd_jax.methods.focal import focal_loss
from ltkd_jax.methods.primitives import effective_number_weights

from .properties import Case, LossProperties, SpecChecks
from .vectors import W, Y, Z, assert_close


def test_tv3_focal():
    assert_close(focal_loss(Z, labels=Y, gamma=1.0)[0], 0.694366)
    repo, _ = focal_loss(Z, labels=Y, gamma=1.0, class_weights=W, ldam_repo_form=True)
    assert_close(repo, 1.865528)


def test_reductions():
    # gamma = 0 is the cross-entropy.
    assert_close(focal_loss(Z, labels=Y, gamma=0.0)[0], cross_entropy(Z, labels=Y)[0])
    # Without weights the LDAM-repo focal form is the true focal loss.
    assert_close(focal_loss(Z, labels=Y, ldam_repo_form=True)[0], focal_loss(Z, labels=Y)[0])


class TestLosses(LossProperties):
    cases = {
        "focal": Case(focal_loss, dict(logits=Z, labels=Y), {"gamma": 2.0}),
        "focal_repo": Case(
            focal_loss, dict(logits=Z, labels=Y, class_weights=W), {"ldam_repo_form": True}
        ),
    }


class TestSpec(SpecChecks):
    name, module, loss_fn = "focal", focal, focal_loss
    shared_fields = frozenset({"gamma", "ldam_repo_form"})
    bad_values = {"gamma": -1.0, "class_weighting": "drw_"}
    overrides = {"gamma": 2.0, "ldam_repo_form": True, "class_weighting": "reweight"}
    num_teachers = 0

    def expected(self, c, task, student, labels, teachers, epoch):
        weights = effective_number_weights(task.class_counts, beta=c.cb_beta)
        return focal_loss(
            student.logits,
            labels=labels,
            gamma=c.gamma,
            class_weights=weights,
            ldam_repo_form=c.ldam_repo_form,
        )
