"""What a method module declares, and the pieces every method shares.

A method module (``ltkd_jax/methods/<name>.py``) holds its pure loss function(s) and a
``METHODS`` tuple of `Spec`s, one per name it registers. A `Spec` gives the registry:

- ``kind``: `TRAINING` (the trainer runs its loss) or `CORRECTION` (it corrects a finished
  run's predictions, nothing is trained; ``correct`` says how, ``runs/posthoc.py`` runs it);
- ``config()``: the method's own ``config.loss`` section, every field with its default and a
  comment (the command line shows them: ``--print_config``);
- its whole recipe beyond the loss, whatever the shared recipe (data, model, schedule) it is
  put on: ``sampler``, ``head``, ``teacher_count`` / ``color_jitter_teachers`` (an
  ensemble's size), ``epoch_fields`` (the loss fields counted in epochs, rescaled with the
  schedule) and ``official_settings(setting)`` (the loss values its official code uses in that
  setting, e.g. DKD's beta per teacher); ``config.defaults.set_method`` applies them;
- ``validate(config) -> [errors]``: checks run by ``config.checks.validate_config`` before any
  data or teacher is read;
- ``needs(config) -> Needs``: what the trainer must provide (teachers, their class feature
  means, a frozen backbone, a finished run to start from);
- ``student_parts(config, teacher_widths) -> StudentParts``: learnable modules the method
  adds to the student (CBD's projection, KRDistill's regressor), under their own parameter
  subtrees; the backbones know nothing of them;
- ``make(config, task) -> loss(student, labels, teachers, ctx)``: the function the jitted
  train step calls. ``student`` is a `ModelOutput`, ``teachers`` a tuple of them (empty
  without a teacher), ``ctx`` the per-epoch arrays of `epoch_context`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from ltkd_jax.methods import primitives


class ModelOutput(NamedTuple):
    logits: jnp.ndarray
    features: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class Needs:
    """What a method asks of the trainer."""

    teachers: int = 0  # 0: none; 1: one frozen teacher; -1: config.teacher.count of them
    feature_means: bool = False  # per-class mean teacher features on the training set
    frozen_backbone: bool = False  # only the classifier trains (cRT)
    init_run: bool = False  # starts from a finished run, config.init.workdir (cRT, corrections)


@dataclasses.dataclass(frozen=True)
class StudentParts:
    """Modules a method adds to the student network (see `models.Network`).

    ``neck`` maps the pooled features before the classifier (the classifier sees its output);
    ``side`` maps the features the loss receives, after the classifier (it does not change
    the logits). Each exposes its output width as ``features``.
    """

    neck: nn.Module | None = None
    side: nn.Module | None = None


@dataclasses.dataclass(frozen=True)
class Task:
    """Facts about the training data a loss may need."""

    class_counts: np.ndarray
    class_groups: np.ndarray
    dataset: str = ""
    teacher_feature_means: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Setting:
    """Where a method is run: the shared recipe (``bkd`` and ``mdistiller`` for the CIFAR
    recipes of docs/recipes.md, ``folder``, ``large_scale``; empty for a user's own), the
    dataset and the teacher / student architectures. A method's official code may use other
    loss values in different settings (`Spec.official_settings`)."""

    recipe: str = ""
    dataset: str = ""
    teacher: str = ""
    student: str = ""


LossFn = Callable[[ModelOutput, jnp.ndarray, tuple, dict], tuple]
# (variables, tau, log prior [C]) -> (variables, logit offset [C] or None): a correction of
# a finished run's network at strength tau.
CorrectFn = Callable[[dict, float, np.ndarray], tuple]

TRAINING = "training"  # the trainer runs the method's loss
CORRECTION = "correction"  # a correction of a finished run: nothing is trained
KINDS = (TRAINING, CORRECTION)
# The epoch-counted loss defaults (DRW from epoch 160, DKD's 20 warm-up epochs) are those of
# the 200-epoch BKD recipe: a schedule of E epochs scales them by E / 200.
DEFAULTS_EPOCHS = 200


@dataclasses.dataclass(frozen=True)
class Method:
    """A method made for one config and task: what the trainer runs."""

    name: str
    loss: LossFn
    epoch_context: Callable[[int], dict]
    needs: Needs = Needs()


def _no_needs(config: ml_collections.ConfigDict) -> Needs:
    return Needs()


def _no_checks(config: ml_collections.ConfigDict) -> list[str]:
    return []


def _no_parts(config: ml_collections.ConfigDict, teacher_widths: tuple[int, ...]) -> StudentParts:
    return StudentParts()


def _defaults_everywhere(setting: Setting) -> dict:
    return {}


@dataclasses.dataclass(frozen=True)
class Spec:
    """A registry entry; see the module docstring."""

    name: str
    config: Callable[[], ml_collections.ConfigDict]
    make: Callable[[ml_collections.ConfigDict, Task], LossFn] | None  # None for a CORRECTION
    needs: Callable[[ml_collections.ConfigDict], Needs] = _no_needs
    validate: Callable[[ml_collections.ConfigDict], list[str]] = _no_checks
    student_parts: Callable[[ml_collections.ConfigDict, tuple[int, ...]], StudentParts] = _no_parts
    doc: str = ""  # the method's documentation: its module's docstring
    kind: str = TRAINING  # KINDS
    correct: CorrectFn | None = None  # a CORRECTION's change of the run's network
    # The recipe the method brings to any shared recipe (config.defaults.set_method):
    sampler: str = "instance"  # config.data.sampler
    head: str | None = None  # config.model.head and its teachers'; None: the recipe's
    teacher_count: int = 1  # config.teacher.count: the size of an ensemble (Needs.teachers -1)
    color_jitter_teachers: int = 0  # config.teacher.color_jitter_teachers
    epoch_fields: tuple[str, ...] = ()  # config.loss fields counted in epochs
    # config.loss values the method's official code uses in a setting, beyond config()'s.
    official_settings: Callable[[Setting], dict] = _defaults_everywhere


def loss_kwargs(fn: Callable, config: ml_collections.ConfigDict) -> dict:
    """The fields of `config.loss` that are keyword arguments of the loss function `fn`:
    a method's config section and its loss share their names, so the hyper-parameters pass
    through without being listed twice."""
    params = inspect.signature(fn).parameters
    return {name: config.loss[name] for name in config.loss if name in params}


def one_teacher(config: ml_collections.ConfigDict) -> Needs:
    return Needs(teachers=1)


# ---------------------------------------------------------------------------------------
# Class weighting, shared by the methods that weight their CE (or their KD target) by class
# ---------------------------------------------------------------------------------------

WEIGHTINGS = ("none", "reweight", "drw")
# The class-weighting fields counted in epochs (a method that has them declares them).
WEIGHTING_EPOCH_FIELDS = ("drw_epoch",)


def bkd_repo_weighting(dataset: str) -> str:
    """The class-weighting rule the BKD repository forces on every student loss
    (``train_student.py``): DRW on CIFAR-10, effective-number re-weighting from epoch 0
    otherwise (CIFAR-100, and our choice for any other data)."""
    return "drw" if dataset == "cifar10" else "reweight"


def add_class_weighting(c: ml_collections.ConfigDict, default: str = "none") -> None:
    """Adds the class-weighting fields to a method's config section."""
    # Class weights: none | reweight (effective number from epoch 0) | drw (effective
    # number from loss.drw_epoch, ones before; Cao et al. 2019).
    c.class_weighting = default
    c.cb_beta = 0.9999  # beta of the effective number of samples (Cui et al. 2019)
    c.drw_epoch = 160  # first (0-based) epoch of drw's weights


def check_class_weighting(config: ml_collections.ConfigDict) -> list[str]:
    loss = config.loss
    errors = check_choice("loss.class_weighting", loss.class_weighting, WEIGHTINGS)
    if not 0 <= loss.cb_beta < 1:
        errors.append(f"config.loss.cb_beta={loss.cb_beta} must be in [0, 1), e.g. 0.9999")
    if loss.drw_epoch < 0:
        errors.append(f"config.loss.drw_epoch={loss.drw_epoch} must be >= 0")
    return errors


def class_weights_for_epoch(
    weighting: str, class_counts: np.ndarray, epoch: int, *, beta: float, drw_epoch: int
) -> np.ndarray:
    """Per-class weights by rule: none, reweight (from epoch 0) or drw (from drw_epoch)."""
    if weighting == "none" or (weighting == "drw" and epoch < drw_epoch):
        return np.ones(len(class_counts), np.float32)
    if weighting in ("reweight", "drw"):
        weights = primitives.effective_number_weights(class_counts, beta=beta)
        return np.asarray(weights, np.float32)
    raise ValueError(
        f"config.loss.class_weighting={weighting!r} is not known; choose one of {WEIGHTINGS}"
    )


def epoch_context(config: ml_collections.ConfigDict, task: Task) -> Callable[[int], dict]:
    """{'epoch', 'class_weights'} for every method: one structure, so a new epoch never
    recompiles the step. Methods without class weighting get ones."""
    loss = config.loss

    def context(epoch: int) -> dict:
        weights = class_weights_for_epoch(
            loss.get("class_weighting", "none"),
            task.class_counts,
            epoch,
            beta=loss.get("cb_beta", 0.9999),
            drw_epoch=loss.get("drw_epoch", 0),
        )
        return {"epoch": np.float32(epoch), "class_weights": weights}

    return context


def weights_or_none(config: ml_collections.ConfigDict, ctx: dict):
    """Class weights for losses where 'no weights' differs from weights of one."""
    return None if config.loss.class_weighting == "none" else ctx["class_weights"]


# ---------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------


def check_choice(field: str, value, choices) -> list[str]:
    if value in choices:
        return []
    return [f"config.{field}={value!r} is not known; choose one of {list(choices)}"]


def check_positive(config: ml_collections.ConfigDict, *names: str) -> list[str]:
    """config.loss.<name> > 0 for each name."""
    return [
        f"config.loss.{name}={config.loss[name]} must be > 0"
        for name in names
        if not config.loss[name] > 0
    ]


def check_non_negative(config: ml_collections.ConfigDict, *names: str) -> list[str]:
    """config.loss.<name> >= 0 for each name (a loss weight of 0 switches its term off)."""
    return [
        f"config.loss.{name}={config.loss[name]} must be >= 0"
        for name in names
        if not config.loss[name] >= 0
    ]
