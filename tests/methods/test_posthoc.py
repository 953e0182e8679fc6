"""Post-hoc corrections of a finished run (ltkd_jax/methods/posthoc.py): the tau grid and the
tau-normalised classifier, checked against values computed by hand."""

import numpy as np

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
