"""Training methods as recipes: each names its loss and declares what that loss needs.

The trainer knows nothing about individual methods. A `Method` gives it
- `loss(student, labels, teachers, ctx) -> (loss, parts)`, called inside the jitted step;
  `student` is a `ModelOutput`, `teachers` a tuple of `ModelOutput`s (empty without a
  teacher), `ctx` the dict of per-epoch arrays below;
- `epoch_context(epoch) -> dict`: the arrays that change with the epoch (class weights of
  a DRW switch, the epoch for DKD's warm-up). They are computed on the host and passed to
  the step as ordinary arguments of a fixed structure, so a new epoch never recompiles;
- `needs`: what the trainer must provide (`Needs`): how many teachers, the teacher's
  class feature means (KRDistill), a regressor onto the teacher's feature width.

Hyper-parameters come from `config.loss`; an empty field takes the loss function's
default, which is methods.md's. Every loss is in `ltkd_jax.losses`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import ml_collections
import numpy as np

from ltkd_jax import losses
from ltkd_jax.data import longtail


class ModelOutput(NamedTuple):
    logits: jnp.ndarray
    features: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class Needs:
    """What a method asks of the trainer."""

    teachers: int = 0  # 0: none; 1: one frozen teacher; -1: config.teacher.count of them
    feature_means: bool = False  # per-class mean teacher features on the training set
    regressor: bool = False  # student features mapped to the teacher's feature width
    # A projection after pooling as wide as the teachers' features together (CBD).
    projection: bool = False
    frozen_backbone: bool = False  # only the classifier trains (cRT)
    head: str | None = None  # the student head the loss assumes


LossFn = Callable[[ModelOutput, jnp.ndarray, tuple, dict], tuple]


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    loss: LossFn
    epoch_context: Callable[[int], dict]
    needs: Needs = Needs()


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A registry entry: what the method needs (from the config alone) and its loss."""

    needs: Callable[[ml_collections.ConfigDict], Needs]
    loss: Callable[[ml_collections.ConfigDict, Task], LossFn]


@dataclasses.dataclass(frozen=True)
class Task:
    """Facts about the training data a loss may need."""

    class_counts: np.ndarray
    class_groups: np.ndarray
    dataset: str = ""
    teacher_feature_means: np.ndarray | None = None


# ---------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------


def _hparams(config: ml_collections.ConfigDict, *names: str) -> dict:
    """The `config.loss` fields among `names` that are set (None means the default)."""
    return {n: config.loss[n] for n in names if config.loss[n] is not None}


def class_weights_for_epoch(
    weighting: str, class_counts: np.ndarray, epoch: int, *, beta: float, drw_epoch: int
) -> np.ndarray:
    """Per-class weights by rule (methods.md 1, 4.2, 4.4): none, reweight or drw."""
    if weighting == "none" or (weighting == "drw" and epoch < drw_epoch):
        return np.ones(len(class_counts), np.float32)
    if weighting in ("reweight", "drw"):
        return np.asarray(losses.effective_number_weights(class_counts, beta=beta), np.float32)
    raise ValueError(
        f"config.loss.class_weighting={weighting!r} is not known; choose none, reweight or drw"
    )


def _epoch_context(config: ml_collections.ConfigDict, task: Task) -> Callable[[int], dict]:
    """{'epoch', 'class_weights'} for every method: one structure, never a recompile."""

    def context(epoch: int) -> dict:
        weights = class_weights_for_epoch(
            config.loss.class_weighting,
            task.class_counts,
            epoch,
            beta=config.loss.cb_beta,
            drw_epoch=config.loss.drw_epoch,
        )
        return {"epoch": np.float32(epoch), "class_weights": weights}

    return context


def _weights_or_none(config: ml_collections.ConfigDict, ctx: dict):
    """Class weights for losses where 'no weights' differs from weights of one."""
    return None if config.loss.class_weighting == "none" else ctx["class_weights"]


def _needs(needs: Needs = Needs()) -> Callable[[ml_collections.ConfigDict], Needs]:
    return lambda config: needs


# ---------------------------------------------------------------------------------------
# Baselines (methods.md 4)
# ---------------------------------------------------------------------------------------


def _ce(config, task):
    def loss(student, labels, teachers, ctx):
        if config.loss.class_weighting != "none":
            return losses.weighted_cross_entropy(
                student.logits, labels=labels, class_weights=ctx["class_weights"]
            )
        return losses.cross_entropy(student.logits, labels=labels)

    return loss


def _cb_needs(config) -> Needs:
    """Class-balanced loss = CE weighted by effective numbers (methods.md 4.2)."""
    if config.loss.class_weighting == "none":
        raise ValueError(
            "method 'cb' weights the CE by class: set --config.loss.class_weighting=reweight "
            "(from epoch 0) or drw"
        )
    return Needs()


def _focal(config, task):
    def loss(student, labels, teachers, ctx):
        return losses.focal_loss(
            student.logits,
            labels=labels,
            class_weights=_weights_or_none(config, ctx),
            **_hparams(config, "gamma"),
        )

    return loss


def _ldam_drw(config, task):
    counts = jnp.asarray(task.class_counts)

    def loss(student, labels, teachers, ctx):
        return losses.ldam_loss(
            student.logits,
            labels=labels,
            class_counts=counts,
            class_weights=_weights_or_none(config, ctx),
        )

    return loss


def _logit_adjust(config, task):
    counts = jnp.asarray(task.class_counts)

    def loss(student, labels, teachers, ctx):
        return losses.logit_adjusted_loss(
            student.logits, labels=labels, class_counts=counts, **_hparams(config, "tau")
        )

    return loss


# ---------------------------------------------------------------------------------------
# Distillation (methods.md 4.7, 4.8, 5-8)
# ---------------------------------------------------------------------------------------


def _kd(config, task):
    def loss(student, labels, teachers, ctx):
        return losses.kd_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            class_weights=_weights_or_none(config, ctx),
            **_hparams(config, "temperature", "alpha", "ce_weight"),
        )

    return loss


def _dkd(config, task):
    def loss(student, labels, teachers, ctx):
        return losses.dkd_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            # mdistiller counts epochs from 1: min((e + 1) / warmup, 1) for 0-based e.
            epoch=ctx["epoch"] + 1,
            warmup=float(config.loss.warmup_epochs),
            **_hparams(config, "temperature", "alpha", "beta", "ce_weight"),
        )

    return loss


def _bkd(config, task):
    """BKD: weights on the teacher's class columns (methods.md 5.1); CE unweighted."""

    def loss(student, labels, teachers, ctx):
        return losses.bkd_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            class_weights=ctx["class_weights"],
            **_hparams(config, "temperature", "alpha"),
        )

    return loss


def _dukd(config, task):
    """DU-KD with TGLS (reconstruction, methods.md 6.2)."""
    counts = jnp.asarray(task.class_counts)

    def loss(student, labels, teachers, ctx):
        return losses.dukd_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            class_counts=counts,
            prior_placement=config.loss.prior_placement,
            **_hparams(config, "temperature", "alpha", "tau", "lam"),
        )

    return loss


def _krdistill_needs(config) -> Needs:
    """The feature term (and with it the regressor and class means) only when beta > 0."""
    uses_features = (config.loss.beta or 0.0) > 0
    return Needs(teachers=1, feature_means=uses_features, regressor=uses_features)


def _krdistill(config, task):
    """KRDistill-R (reconstruction, methods.md 7.2): rectified logits and features."""
    counts = jnp.asarray(task.class_counts)
    uses_features = _krdistill_needs(config).feature_means
    means = None
    if uses_features:
        if task.teacher_feature_means is None:
            raise ValueError("krdistill's feature term needs the teacher's class feature means")
        means = jnp.asarray(task.teacher_feature_means)

    def loss(student, labels, teachers, ctx):
        feature_args = {}
        if uses_features:
            feature_args = dict(
                features=student.features,
                teacher_features=teachers[0].features,
                class_feature_means=means,
            )
        return losses.krdistill_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            class_counts=counts,
            **feature_args,
            **_hparams(config, "temperature", "alpha", "beta", "tau"),
        )

    return loss


def _ltkd(config, task):
    """LTKD: rebalanced cross-group, re-weighted within-group KD (losses.ltkd_loss)."""
    counts = jnp.asarray(task.class_counts)
    groups = ltkd_groups(config.loss.groups, task)

    def loss(student, labels, teachers, ctx):
        return losses.ltkd_loss(
            student.logits,
            labels=labels,
            teacher_logits=teachers[0].logits,
            class_counts=counts,
            class_groups=groups,
            rebalance=config.loss.rebalance,
            **_hparams(config, "temperature", "alpha", "beta", "tau", "ce_weight"),
        )

    return loss


LTKD_GROUPS = ("tail33", "shot", "thirds")
LTKD_REBALANCE = ("batch", "r1", "r2", "none")


def ltkd_groups(name: str, task: Task) -> jnp.ndarray:
    """LTKD's class groups: tail33 (33/34/33% by count, the paper's), shot (the evaluation
    groups of the task) or thirds (three equal blocks, the last taking the remainder)."""
    if name == "tail33":
        return jnp.asarray(longtail.tail33_groups(task.class_counts))
    if name == "shot":
        return jnp.asarray(task.class_groups)
    if name == "thirds":
        return losses.thirds_groups(task.class_counts)
    raise ValueError(f"config.loss.groups={name!r} is not known; choose one of {LTKD_GROUPS}")


def _ltkd_needs(config) -> Needs:
    """Checks LTKD's choices from the config alone, before any data or teacher is loaded."""
    if config.loss.groups not in LTKD_GROUPS:
        raise ValueError(
            f"config.loss.groups={config.loss.groups!r} is not known; choose one of {LTKD_GROUPS}"
        )
    if config.loss.rebalance not in LTKD_REBALANCE:
        raise ValueError(
            f"config.loss.rebalance={config.loss.rebalance!r} is not known; choose one of "
            f"{LTKD_REBALANCE}"
        )
    return Needs(teachers=1)


def _cbd_loss(config, task):
    """CBD: CE + cosine feature distillation from one or several teachers (methods.md 8)."""

    def loss(student, labels, teacher_outputs, ctx):
        return losses.cbd_loss(
            student.logits,
            labels=labels,
            features=student.features,
            teacher_features=tuple(t.features for t in teacher_outputs),
            **_hparams(config, "alpha", "beta"),
        )

    return loss


def _ce_unweighted(config, task):
    """cRT (methods.md 4.6): a trained backbone frozen, the classifier re-trained with CE."""

    def loss(student, labels, teachers, ctx):
        return losses.cross_entropy(student.logits, labels=labels)

    return loss


ONE_TEACHER = _needs(Needs(teachers=1))

METHODS: dict[str, Recipe] = {
    "ce": Recipe(_needs(), _ce),
    "cb": Recipe(_cb_needs, _ce),
    "focal": Recipe(_needs(), _focal),
    "ldam_drw": Recipe(_needs(Needs(head="normed")), _ldam_drw),
    "logit_adjust": Recipe(_needs(), _logit_adjust),
    "kd": Recipe(ONE_TEACHER, _kd),
    "dkd": Recipe(ONE_TEACHER, _dkd),
    "bkd": Recipe(ONE_TEACHER, _bkd),
    "dukd": Recipe(ONE_TEACHER, _dukd),
    "krdistill": Recipe(_krdistill_needs, _krdistill),
    "ltkd": Recipe(_ltkd_needs, _ltkd),
    "cbd": Recipe(_needs(Needs(teachers=1, head="cosine", projection=True)), _cbd_loss),
    "cbd_ensemble": Recipe(_needs(Needs(teachers=-1, head="cosine", projection=True)), _cbd_loss),
    "crt": Recipe(_needs(Needs(frozen_backbone=True)), _ce_unweighted),
}


def _recipe(config: ml_collections.ConfigDict) -> Recipe:
    if config.method not in METHODS:
        raise ValueError(
            f"config.method={config.method!r} is not known; choose one of {sorted(METHODS)}"
        )
    return METHODS[config.method]


def needs_of(config: ml_collections.ConfigDict) -> Needs:
    """A method's needs, known from the config before any teacher or data is loaded."""
    return _recipe(config).needs(config)


def num_teachers(config: ml_collections.ConfigDict) -> int:
    n = needs_of(config).teachers
    return config.teacher.count if n < 0 else n


def make_method(config: ml_collections.ConfigDict, task: Task) -> Method:
    recipe = _recipe(config)
    return Method(
        name=config.method,
        loss=recipe.loss(config, task),
        epoch_context=_epoch_context(config, task),
        needs=recipe.needs(config),
    )
