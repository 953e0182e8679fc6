"""Checks every method module runs on its own cases: loss properties and registry entries.

A test module declares its losses' cases and inherits the checks::

    class TestKdLoss(DistillationProperties):
        cases = {"kd": Case(kd_loss, dict(logits=Z, labels=Y, teacher_logits=V))}

    class TestKdSpec(SpecChecks):
        name, module, loss_fn = "kd", kd, kd_loss
        ...
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import types
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from ltkd_jax import methods
from ltkd_jax.config import defaults
from ltkd_jax.data import longtail
from ltkd_jax.methods.primitives import effective_number_weights

from .vectors import N6, assert_close

PER_EXAMPLE = ("logits", "labels", "teacher_logits", "features", "teacher_features")
STUDENT = ("logits", "features")
TEACHER = ("teacher_logits", "teacher_features", "class_feature_means")


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: the key of `outputs`
class Case:
    """One call of a loss: ``fn(arrays['logits'], **other arrays, **static)``."""

    fn: Callable[..., Any]
    arrays: dict[str, Any]  # numpy inputs (traced under jit / vmap)
    static: dict[str, Any] = dataclasses.field(default_factory=dict)  # Python options
    # Gradient-check the jit-compiled loss: group losses (DKD, LTKD) compile faster as one
    # program than as the many small programs of eager mode; the others share eager programs.
    jit_grad_check: bool = False


def tree_cast(tree, dtype):
    """Float leaves to ``dtype``; integer leaves unchanged."""

    def cast(x):
        x = np.asarray(x)
        return jnp.asarray(x, dtype) if np.issubdtype(x.dtype, np.floating) else jnp.asarray(x)

    return jax.tree.map(cast, tree)


def call(case: Case, arrays: dict[str, Any]):
    kwargs = {k: v for k, v in arrays.items() if k != "logits"}
    return case.fn(arrays["logits"], **kwargs, **case.static)


def _map_examples(fn: Callable[[Any], Any], arrays: dict[str, Any]) -> dict[str, Any]:
    """Apply ``fn`` to every per-example leaf (batch axis first); class-level inputs unchanged."""
    return {k: jax.tree.map(fn, v) if k in PER_EXAMPLE else v for k, v in arrays.items()}


def _extreme(case: Case) -> dict[str, Any]:
    """Logits of +-1e4, teacher disagreeing, classes with a count of 1, a zero feature row."""
    arrays = dict(case.arrays)
    num_classes = arrays["logits"].shape[-1]
    row = np.resize([1e4, -1e4, 0.0, 1e4, -1e4, 3.0], num_classes)
    arrays["logits"] = np.stack([row, np.roll(row, 1)])
    if "teacher_logits" in arrays:
        arrays["teacher_logits"] = -arrays["logits"]
    if "class_counts" in arrays:
        counts = np.resize([1000, 1, 1], num_classes)
        arrays["class_counts"] = counts
        if "class_weights" in arrays:
            arrays["class_weights"] = np.asarray(effective_number_weights(counts))
    if "features" in arrays:
        arrays["features"] = arrays["features"] * np.array([[1e4], [0.0]])
    return arrays


@functools.cache
def outputs(case: Case) -> dict[str, Any]:
    """Everything the property tests read, from one eager call and ONE jit-compiled program
    per case (XLA compiles dominate these tests' runtime on CPU, and each extra copy of the
    loss in the program costs compile time, so each property adds one copy at most).

    In the program: the loss; under ``vmap``, the batch and the batch in reverse order (a
    permutation, so both must give the loss); the batch doubled; the gradient w.r.t. the
    teacher inputs; loss and student gradient at extreme inputs; the loss on bf16 inputs.
    """
    base = tree_cast(case.arrays, jnp.float32)
    extreme = tree_cast(_extreme(case), jnp.float32)
    low = tree_cast(case.arrays, jnp.bfloat16)

    def run(base, extreme, low):
        loss_of = functools.partial(call, case)
        stacked = {
            k: jax.tree.map(lambda x: jnp.stack([x, x[::-1]]), base[k])
            for k in PER_EXAMPLE
            if k in base
        }
        shared = {k: v for k, v in base.items() if k not in PER_EXAMPLE}
        teacher = {k: base[k] for k in TEACHER if k in base}
        student = {k: extreme[k] for k in STUDENT if k in extreme}
        return {
            "loss": loss_of(base),
            "vmapped": jax.vmap(lambda s: loss_of({**s, **shared}))(stacked),
            "doubled": loss_of(_map_examples(lambda x: jnp.concatenate([x, x]), base))[0],
            "teacher_grads": jax.grad(lambda t: loss_of({**base, **t})[0])(teacher),
            "extreme": jax.value_and_grad(lambda s: loss_of({**extreme, **s}), has_aux=True)(
                student
            ),
            "bf16": loss_of(low),
        }

    # Eager references; the second re-uses the first's op-by-op programs (same shapes, dtypes).
    upcast = jax.tree.map(lambda x: x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x, low)
    return {
        "eager": call(case, base),
        "bf16_in_float32": call(case, upcast)[0],
        **jax.jit(run)(base, extreme, low),
    }


class LossProperties:
    """Properties every loss has, run on each case of ``cases`` (parametrized by name)."""

    cases: ClassVar[dict[str, Case]] = {}

    def pytest_generate_tests(self, metafunc):
        if "case" in metafunc.fixturenames:
            names = sorted(self.cases)
            metafunc.parametrize("case", [self.cases[n] for n in names], ids=names)

    def test_scalar_float32_and_finite(self, case):
        loss, parts = outputs(case)["loss"]
        assert loss.shape == () and loss.dtype == jnp.float32
        assert parts and all(p.shape == () and p.dtype == jnp.float32 for p in parts.values())
        assert np.isfinite(loss) and all(np.isfinite(p) for p in parts.values())

    @pytest.mark.slow
    def test_check_grads_float64(self, case, fast_compiles):
        with jax.enable_x64(True):  # restores the flag after, so other tests stay float32
            arrays = tree_cast(case.arrays, jnp.float64)
            student = {k: arrays[k] for k in STUDENT if k in arrays}

            def f(*xs):
                return call(case, {**arrays, **dict(zip(student, xs, strict=True))})[0]

            if case.jit_grad_check:
                f = jax.jit(f)
            assert f(*student.values()).dtype == jnp.float64
            check_grads(
                f, tuple(student.values()), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5
            )

    def test_jit_and_vmap_match_eager(self, case):
        out = outputs(case)
        jax.tree.map(
            lambda a, b: assert_close(a, b, rtol=1e-6, atol=1e-7), out["eager"], out["loss"]
        )
        for i in (0, 1):  # The batch, then the same batch in reverse order.
            jax.tree.map(
                lambda a, b, i=i: assert_close(a[i], b, rtol=1e-6, atol=1e-7),
                out["vmapped"],
                out["loss"],
            )

    def test_batch_mean_invariance(self, case):
        out = outputs(case)
        assert_close(out["doubled"], out["loss"][0], rtol=1e-6)

    def test_finite_for_extreme_logits(self, case):
        (loss, parts), grads = outputs(case)["extreme"]
        for x in [loss, *parts.values(), *jax.tree.leaves(grads)]:
            assert np.all(np.isfinite(x)), x

    def test_bfloat16_inputs_accumulate_in_float32(self, case):
        out = outputs(case)
        loss, parts = out["bf16"]
        assert loss.dtype == jnp.float32
        assert all(p.dtype == jnp.float32 for p in parts.values())
        assert_close(loss, out["bf16_in_float32"], rtol=1e-6)

    def test_rejects_unknown_keyword(self, case):
        with pytest.raises(TypeError):
            call(case, {**case.arrays, "not_an_argument": 1.0})


class DistillationProperties(LossProperties):
    """Also for losses with a teacher: no gradient ever reaches the teacher's inputs."""

    def test_zero_gradient_to_teacher(self, case):
        grads = jax.tree.leaves(outputs(case)["teacher_grads"])
        assert grads
        for g in grads:
            np.testing.assert_array_equal(g, np.zeros_like(g))


# ---------------------------------------------------------------------------------------
# Registry entries
# ---------------------------------------------------------------------------------------


def make_inputs(num_teachers: int = 1, width: int = 4):
    """A small task (the six classes of `vectors.N6`) and model outputs for `methods.make`."""
    rng = np.random.default_rng(0)
    num_classes, batch = len(N6), 5

    def output(features_width):
        logits = rng.normal(size=(batch, num_classes)).astype(np.float32)
        return methods.ModelOutput(logits, rng.normal(size=(batch, features_width)).astype("f4"))

    task = methods.Task(
        class_counts=N6,
        class_groups=longtail.shot_groups(N6),
        teacher_feature_means=rng.normal(size=(num_classes, width)).astype(np.float32),
    )
    student = output(width * num_teachers)
    teachers = tuple(output(width) for _ in range(num_teachers))
    labels = np.array([0, 2, 4, 5, 1])
    return task, student, labels, teachers


def method_loss(config, task, student, labels, teachers, epoch: int):
    """The loss the trainer's step computes for `config` at 0-based `epoch`."""
    method = methods.make(config, task)
    return method.loss(student, labels, teachers, method.epoch_context(epoch))


class SpecChecks:
    """One registered method's entry: registration, config defaults, validation, `make`.

    A subclass sets the class attributes and ``expected``, the pure loss called by hand with
    the config's values, which `methods.make` must reproduce.
    """

    name: ClassVar[str]  # the registered name
    module: ClassVar[types.ModuleType]  # its method module
    loss_fn: ClassVar[Callable[..., Any] | None] = None  # the pure loss `make` calls
    # Config fields that are also keywords (with a default) of `loss_fn`: listed, so a
    # renamed field or keyword fails here instead of silently not being compared.
    shared_fields: ClassVar[frozenset[str]] = frozenset()
    keyword_of: ClassVar[dict[str, str]] = {}  # config field -> loss keyword, where they differ
    default_differs: ClassVar[dict[str, str]] = {}  # field -> why the two defaults differ
    bad_values: ClassVar[dict[str, Any]] = {}  # field -> a value `validate` must reject
    overrides: ClassVar[dict[str, Any]] = {}  # non-default config.loss values for `make`
    epoch: ClassVar[int] = 0  # the 0-based epoch of the `make` check
    num_teachers: ClassVar[int] = 1

    def expected(self, c, task, student, labels, teachers, epoch):
        raise NotImplementedError

    def test_registered(self):
        spec = methods.METHODS[self.name]
        assert spec in self.module.METHODS
        assert spec.doc == self.module.__doc__ and spec.doc.strip()

    def test_config_defaults_equal_the_loss_keyword_defaults(self):
        config = methods.default_config(self.name)
        params = inspect.signature(self.loss_fn).parameters if self.loss_fn else {}
        compared = {
            field: params[self.keyword_of.get(field, field)].default
            for field in config
            if self.keyword_of.get(field, field) in params
            and params[self.keyword_of.get(field, field)].default is not inspect.Parameter.empty
        }
        assert set(compared) == set(self.shared_fields)
        for field, function_default in compared.items():
            if field in self.default_differs:  # documented: keep the note true
                assert config[field] != function_default, field
            else:
                assert config[field] == function_default, field

    def test_validate_rejects_a_bad_value_naming_the_field(self):
        spec = methods.METHODS[self.name]
        config = defaults.base_config(self.name)
        assert spec.validate(config) == []
        for field, value in self.bad_values.items():
            bad = copy.deepcopy(config)
            bad.loss[field] = value
            errors = spec.validate(bad)
            assert any(f"config.loss.{field}=" in e for e in errors), (field, errors)

    def test_make_equals_the_pure_loss_with_the_config_values(self):
        config = defaults.base_config(self.name)
        for field, value in self.overrides.items():
            assert config.loss[field] != value, f"override {field} with a non-default value"
            config.loss[field] = value
        task, student, labels, teachers = make_inputs(self.num_teachers)
        got = method_loss(config, task, student, labels, teachers, self.epoch)
        want = self.expected(config.loss, task, student, labels, teachers, self.epoch)
        assert set(got[1]) == set(want[1])
        jax.tree.map(lambda a, b: assert_close(a, b, rtol=1e-6, atol=1e-7), got, want)
