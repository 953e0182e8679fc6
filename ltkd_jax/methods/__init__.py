"""Training methods: one module per method (or per small family of baselines).

Each module under ``ltkd_jax/methods/`` holds its pure loss function(s), its own
``config.loss`` section, checks, needs and learnable parts, and registers itself through a
module-level ``METHODS`` tuple of `base.Spec`; its docstring is the method's documentation
(equations, source, hyper-parameters, reference numbers). Adding a method is one new module
here, one config file under ``configs/`` and one test module: the registry below finds every
module of this package by itself.

The trainer reads a method only through this registry: `make`, `needs_of`, `num_teachers`,
`student_parts`. A registry entry of kind `CORRECTION` (tau-norm, post-hoc logit adjustment)
corrects a finished run instead of training; the job runs it (``ltkd_jax/runs/posthoc.py``).
"""

from __future__ import annotations

import importlib
import pkgutil

import ml_collections

from ltkd_jax import models
from ltkd_jax.methods.base import (
    CORRECTION,
    TRAINING,
    LossFn,
    Method,
    ModelOutput,
    Needs,
    Setting,
    Spec,
    StudentParts,
    Task,
    epoch_context,
)

# Modules of this package that are not methods.
_INFRASTRUCTURE = ("base", "primitives")


def _discover() -> dict[str, Spec]:
    """Every `Spec` of every method module, by name, in module order."""
    registry: dict[str, Spec] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in _INFRASTRUCTURE:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for spec in getattr(module, "METHODS", ()):
            if spec.name in registry:
                raise ValueError(f"method {spec.name!r} is registered twice")
            registry[spec.name] = spec
    return registry


METHODS: dict[str, Spec] = _discover()
NAMES: tuple[str, ...] = tuple(METHODS)


def get(name: str) -> Spec:
    if name not in METHODS:
        raise ValueError(f"config.method={name!r} is not known; choose one of {sorted(METHODS)}")
    return METHODS[name]


def default_config(name: str) -> ml_collections.ConfigDict:
    """The `config.loss` section of method `name`, every field at its default."""
    return get(name).config()


def needs_of(config: ml_collections.ConfigDict) -> Needs:
    """A method's needs, known from the config before any teacher or data is loaded."""
    return get(config.method).needs(config)


def num_teachers(config: ml_collections.ConfigDict) -> int:
    n = needs_of(config).teachers
    return config.teacher.count if n < 0 else n


def teacher_widths(config: ml_collections.ConfigDict) -> tuple[int, ...]:
    """Feature width of each teacher, from `config.teacher.model` (a loaded teacher is
    checked against it)."""
    return (models.feature_dim(config.teacher.model),) * num_teachers(config)


def student_parts(config: ml_collections.ConfigDict) -> StudentParts:
    """The modules the method adds to the student, from the config alone: a finished run's
    network is rebuilt the same way for evaluation and export."""
    return get(config.method).student_parts(config, teacher_widths(config))


def scaled_epoch_fields(config: ml_collections.ConfigDict, scale: float) -> dict[str, int]:
    """The method's epoch-counted loss fields (`Spec.epoch_fields`) times `scale`, rounded and
    at least 1, so a phase that starts late (DRW) or lasts (DKD's warm-up) keeps its place in
    a shorter or longer schedule."""
    fields = get(config.method).epoch_fields
    return {name: max(1, round(config.loss[name] * scale)) for name in fields}


def make(config: ml_collections.ConfigDict, task: Task) -> Method:
    """The method of `config` for `task`: its loss, per-epoch context and needs."""
    spec = get(config.method)
    if spec.kind != TRAINING:
        raise ValueError(
            f"config.method={config.method!r} is a {spec.kind} of a finished run, not a loss to "
            "train; run it through ltkd_jax.runs.job.run"
        )
    return Method(
        name=config.method,
        loss=spec.make(config, task),
        epoch_context=epoch_context(config, task),
        needs=spec.needs(config),
    )


__all__ = [
    "CORRECTION",
    "METHODS",
    "NAMES",
    "LossFn",
    "Method",
    "ModelOutput",
    "Needs",
    "Setting",
    "Spec",
    "StudentParts",
    "TRAINING",
    "Task",
    "default_config",
    "get",
    "make",
    "needs_of",
    "num_teachers",
    "scaled_epoch_fields",
    "student_parts",
    "teacher_widths",
]
