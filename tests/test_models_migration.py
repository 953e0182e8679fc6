"""Old run directories still load: the CBD projection (old key 'projection') becomes the
network's neck ('neck'), the KRDistill regressor ('regressor') its side module ('side').

The fixture is a CBD student written by the pre-refactor code: resnet8, cosine head, a
64-wide Dense + ReLU projection, 8x8x1 digits, 10 classes, with the logits and features that
code produced on fixed inputs.
"""

import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ltkd_jax import models
from ltkd_jax.training import checkpointing

# Restores a real checkpoint; tests/test_old_run_dirs.py covers the same path in the quick suite.
pytestmark = pytest.mark.slow

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
OLD_RUN = FIXTURES / "old_layout_cbd_run"
EXPECTED = FIXTURES / "old_layout_cbd_run_expected.npz"


class DenseReLU(nn.Dense):
    """A CBD-style projection: Dense then ReLU, params {kernel, bias} as nn.Dense's."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.relu(super().__call__(x))


def read_raw_variables(workdir: pathlib.Path) -> dict:
    """{params, batch_stats} of a run's latest checkpoint, as stored (no target tree)."""
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    path = workdir / "checkpoints" / str(steps[-1]) / "state"
    checkpointer = ocp.PyTreeCheckpointer()
    stored = checkpointer.metadata(path).item_metadata.tree
    # Host numpy arrays: no device placement to take from the writer's (other) topology.
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), stored)
    state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def _cbd_student() -> models.Network:
    neck = DenseReLU(64, kernel_init=nn.initializers.glorot_uniform())
    return models.get_model("resnet8", 10, head="cosine", neck=neck)


def _assert_matches_recorded(model, variables):
    expected = np.load(EXPECTED)
    logits, features = model.apply(variables, jnp.asarray(expected["inputs"]), train=False)
    # |logits| <= 20 (cosine head); ~10 float32 layers with fan-in <= 576 after a recorded
    # run on possibly another CPU: reordered sums move them by far less than 1e-5 relative.
    for got, want in ((logits, expected["logits"]), (features, expected["features"])):
        scale = float(np.max(np.abs(want)))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


def test_old_checkpoint_migrates_and_reproduces_its_outputs():
    raw = read_raw_variables(OLD_RUN)
    assert models.needs_migration(raw["params"])
    assert raw["params"]["projection"]["kernel"].shape == (64, 64)
    model = _cbd_student()
    with pytest.raises(Exception, match="neck"):  # the old tree does not fit as it is
        model.apply(raw, jnp.zeros((1, 8, 8, 1)), train=False)
    migrated = models.migrate_variables(raw)
    assert not models.needs_migration(migrated["params"])
    assert set(migrated["params"]) == set(raw["params"]) - {"projection"} | {"neck"}
    _assert_matches_recorded(model, migrated)


def test_old_checkpoint_restores_with_a_legacy_target():
    """The teacher-loading path: a target in the old layout, restored, then migrated."""
    model = _cbd_student()
    target = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), train=False)
    )
    legacy = models.legacy_variables(target)
    assert "projection" in legacy["params"] and "neck" not in legacy["params"]
    restored, step = checkpointing.restore_variables(str(OLD_RUN), legacy)
    assert step == 2
    _assert_matches_recorded(model, models.migrate_variables(restored))


def test_migration_renames_regressor_and_rejects_mixed_layouts():
    params = {"Conv_0": {"kernel": 1}, "classifier": {"kernel": 2}, "regressor": {"kernel": 3}}
    migrated = models.migrate_variables({"params": params, "batch_stats": {"x": 4}})
    assert migrated == {
        "params": {"Conv_0": {"kernel": 1}, "classifier": {"kernel": 2}, "side": {"kernel": 3}},
        "batch_stats": {"x": 4},
    }
    assert models.legacy_variables(migrated)["params"] == params
    assert models.migrate_variables(migrated) == migrated  # already new: unchanged
    with pytest.raises(ValueError, match="both 'regressor' and 'side'"):
        models.migrate_variables({"params": {**params, "side": {}}})
