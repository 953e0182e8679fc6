"""`ltkd_jax.export`: StableHLO with a symbolic batch (everywhere), ONNX round trip (with the
[export] extra)."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from deploy_helpers import tiny_run

from ltkd_jax import models
from ltkd_jax.deploy import export, inference

# The exported function folds BatchNorm into the conv weights: float32 rounding of the
# folded weights changes logits by a few ulps of their magnitude per layer; the export's own
# acceptance bound (the issue's) is 1e-4 relative to max(1, max |logit|).
TOL = export.REL_TOLERANCE


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return inference.load_run(tiny_run(tmp_path_factory))


def images(n: int, shape=(8, 8, 1), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def assert_close(reference, got):
    reference = np.asarray(reference)
    np.testing.assert_allclose(got, reference, rtol=0, atol=TOL * max(1.0, np.abs(reference).max()))


@pytest.mark.parametrize("batch", [1, 7])
def test_stablehlo_symbolic_batch(run, tmp_path, batch):
    model, variables = export.inference_model(run)
    assert "batch_stats" not in variables  # folded: no training state left
    path = tmp_path / export.STABLEHLO_FILE
    fn = export.inference_function(model, variables, run.preprocess)
    path.write_bytes(export.export_stablehlo(fn, run.preprocess))
    call = export.load_stablehlo(str(path))
    x = images(batch)
    got = np.asarray(call(x))
    assert got.shape == (batch, run.num_classes) and got.dtype == np.float32
    assert_close(inference.logits_fn(run)(run.variables, x), got)


def test_unfoldable_model_exports_with_constant_batchnorm():
    """A pre-activation WRN cannot fold its BatchNorm: it is exported as constants."""
    model = models.get_model("wrn16_2", 5)
    shapes = jax.eval_shape(
        functools.partial(model.init, train=False), jax.random.key(0), jnp.zeros((1, 8, 8, 3))
    )  # random values, no init compile (seconds on a loaded CPU); non-trivial BN statistics
    rng = np.random.default_rng(0)

    def draw(path, s):
        positive = jax.tree_util.keystr(path).endswith("['var']")
        return rng.uniform(0.5, 1.5, s.shape) if positive else 0.2 * rng.normal(size=s.shape)

    variables = jax.tree_util.tree_map_with_path(
        lambda p, s: np.asarray(draw(p, s), np.float32), shapes
    )
    prep = inference.Preprocess(8, 3, (0.5,) * 3, (0.25,) * 3, 1.0)
    fn = export.inference_function(model, variables, prep)
    exported = export.export_stablehlo(fn, prep, platforms=("cpu",))  # one lowering: faster
    call = jax.export.deserialize(bytearray(exported)).call
    x = images(3, (8, 8, 3))
    assert_close(jax.jit(fn)(x), np.asarray(call(x)))


def test_export_run_writes_and_checks_everything(run, tmp_path):
    missing = export.onnx_available()
    if missing:
        pytest.skip(f"ONNX round trip needs the [export] extra: {missing}")
    out = tmp_path / "out"
    report = export.export_run(run.workdir, str(out), latency=False)
    for name in ("model.jax_export", "model.onnx", "labels.json", "preprocess.json", "export.json"):
        assert os.path.getsize(out / name) > 0, name
    assert all(a["ok"] for a in report["artifacts"].values())
    assert report["bn_folded"] and report["check_images"].startswith("64 test images")
    assert json.load(open(out / "labels.json"))["class_names"] == list(run.class_names)
    prep = inference.Preprocess.from_json(json.load(open(out / "preprocess.json")))
    assert prep == run.preprocess
    session = export.onnx_session(str(out / "model.onnx"))
    (inp,) = session.get_inputs()
    assert inp.name == "images" and inp.type == "tensor(uint8)" and isinstance(inp.shape[0], str)
    for batch in (1, 7):
        x = images(batch, seed=batch)
        got = session.run(None, {"images": x})[0]
        assert_close(inference.logits_fn(run)(run.variables, x), got)


def test_export_without_onnx_still_writes_stablehlo(run, tmp_path):
    report = export.export_run(run.workdir, str(tmp_path), onnx=False)
    assert report["artifacts"]["stablehlo"]["ok"]
    assert "skipped" in report["artifacts"]["onnx"]
    assert not os.path.exists(tmp_path / "model.onnx")


def test_unconvertible_op_is_named():
    if missing := export.onnx_available():
        pytest.skip(f"needs the [export] extra: {missing}")
    prep = inference.Preprocess(4, 1, (0.5,), (0.5,), 1.0)

    def fn(x):  # a host callback has no ONNX equivalent
        x = x.astype(jnp.float32)
        return jax.pure_callback(np.sin, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    with pytest.raises(export.ExportError, match="pure_callback"):
        export.export_onnx(fn, prep, os.devnull)


def test_onnx_failure_keeps_stablehlo(run, tmp_path, monkeypatch):
    def fail(*args):
        raise export.ExportError("jax2onnx could not convert the model: no plugin for 'x'")

    monkeypatch.setattr(export, "onnx_available", lambda: None)
    monkeypatch.setattr(export, "export_onnx", fail)
    with pytest.raises(export.ExportError, match="no plugin for 'x'"):
        export.export_run(run.workdir, str(tmp_path))
    assert os.path.getsize(tmp_path / export.STABLEHLO_FILE) > 0
    written = json.load(open(tmp_path / export.REPORT_FILE))
    assert written["artifacts"]["stablehlo"]["ok"] and "error" in written["artifacts"]["onnx"]
