"""Post-hoc corrections of a finished run (ltkd_jax/methods/posthoc.py): the tau grid, the
tau-normalised classifier and the registry entries, checked against values computed by hand.
Running them end to end: tests/test_distill.py::test_posthoc_corrections_evaluate_a_tau_grid."""

import numpy as np
import pytest

from ltkd_jax import methods
from ltkd_jax.config import checks, defaults
from ltkd_jax.methods import posthoc


def _variables(kernel, bias):
    return {
        "params": {"classifier": {"kernel": np.asarray(kernel), "bias": np.asarray(bias)}},
        "batch_stats": {},
    }


def test_tau_grid_is_zero_to_two_in_tenths():
    grid = posthoc.tau_grid()
    assert len(grid) == 21 and grid[0] == 0.0 and grid[-1] == 2.0
    np.testing.assert_allclose(np.diff(grid), 0.1, atol=1e-9)


def test_tau_zero_is_the_bias_free_classifier():
    kernel = np.array([[3.0, 0.0], [4.0, 2.0]], np.float32)  # column norms 5 and 2
    out = posthoc.tau_normalized_variables(_variables(kernel, [7.0, -1.0]), 0.0)
    classifier = out["params"]["classifier"]
    np.testing.assert_array_equal(classifier["kernel"], kernel)
    np.testing.assert_array_equal(classifier["bias"], [0.0, 0.0])
    features = np.array([[1.0, 1.0]], np.float32)
    logits = features @ classifier["kernel"] + classifier["bias"]
    np.testing.assert_array_equal(logits, [[7.0, 2.0]])  # x @ W, no bias


def test_tau_one_gives_unit_columns_and_keeps_the_other_variables():
    kernel = np.array([[3.0, 0.0], [4.0, 2.0]], np.float32)
    variables = _variables(kernel, [7.0, -1.0])
    variables["params"]["backbone"] = {"w": np.ones(3)}
    out = posthoc.tau_normalized_variables(variables, 1.0)
    np.testing.assert_allclose(
        out["params"]["classifier"]["kernel"], [[0.6, 0.0], [0.8, 1.0]], rtol=1e-6
    )
    assert out["params"]["backbone"] is variables["params"]["backbone"]
    np.testing.assert_array_equal(variables["params"]["classifier"]["bias"], [7.0, -1.0])


def test_corrections_are_registry_entries_of_kind_correction():
    """The job runs a correction because its Spec says so (ltkd_jax/runs/posthoc.py), and the
    config checks ask for the run to correct through its needs, not its name."""
    variables = _variables(np.array([[3.0, 0.0], [4.0, 2.0]], np.float32), [7.0, -1.0])
    log_prior = np.log(np.array([0.75, 0.25], np.float32))
    for name in ("tau_norm", "posthoc_la"):
        spec = methods.get(name)
        assert spec.kind == methods.CORRECTION and spec.make is None
        assert spec.needs(defaults.base_config(name)).init_run
        assert dict(spec.config()) == {}  # nothing to train, no loss fields
        with pytest.raises(ValueError, match="config.init.workdir"):
            checks.validate_config(defaults.base_config(name))
    out, offset = methods.get("tau_norm").correct(variables, 1.0, log_prior)
    assert offset is None
    np.testing.assert_allclose(out["params"]["classifier"]["kernel"], [[0.6, 0.0], [0.8, 1.0]])
    out, offset = methods.get("posthoc_la").correct(variables, 0.5, log_prior)
    assert out is variables
    np.testing.assert_allclose(offset, [-0.5 * np.log(0.75), -0.5 * np.log(0.25)], rtol=1e-6)


def test_training_a_correction_is_refused_with_its_kind():
    task = methods.Task(class_counts=np.array([3, 1]), class_groups=np.zeros(2, np.int32))
    with pytest.raises(ValueError, match="'tau_norm' is a correction of a finished run"):
        methods.make(defaults.base_config("tau_norm"), task)
