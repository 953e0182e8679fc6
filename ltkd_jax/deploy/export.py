"""Export a trained student as a self-contained inference artifact: StableHLO and ONNX.

    python -m ltkd_jax.export --workdir runs/bkd_c100 --out exported/bkd_c100

The exported function takes uint8 NHWC images [B, H, W, C] (any B) and returns float32
logits [B, num_classes]. Normalisation is inside it and BatchNorm is folded into the convs
(`models.fold_for_inference`; models whose BatchNorm cannot be folded, the pre-activation
WRNs and the ImageNet-style ResNets, keep it as a per-channel affine map of constants), so
the artifacts hold no training state. OUT gets:

- `model.jax_export`: `jax.export` serialized StableHLO with a symbolic batch dimension,
  lowered for CPU, CUDA and TPU; load it with `jax.export.deserialize(bytes).call(images)`.
- `model.onnx`: the same function converted by `jax2onnx` (the optional `[export]` extra,
  `pip install -e ".[export]"`), input `images`, output `logits`, batch dimension `B`.
- `labels.json` (class names in logit order) and `preprocess.json` (input size, value range,
  resize / crop, mean and std).
- `export.json`: sizes, the checks below and onnxruntime CPU latency.

After writing, both artifacts run on real test images of the run (64 spread over the
classes) and are compared with the Flax model as the trainer evaluates it; the export fails
when the max abs logit difference exceeds `1e-4 * max(1, max |logit|)` (float32 rounding of
the folded weights is ~1e-6 relative). When `jax2onnx` cannot convert an operation, the error
names it and the StableHLO artifact is still written.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging as logging_std
import os
import sys
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from ltkd_jax import cli, data, models
from ltkd_jax.deploy import inference

STABLEHLO_FILE = "model.jax_export"
ONNX_FILE = "model.onnx"
REPORT_FILE = "export.json"
PLATFORMS = ("cpu", "cuda", "tpu")
CHECK_IMAGES = 64
REL_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """An artifact could not be written or does not match the Flax model."""


def inference_model(run: inference.LoadedRun):
    """(model, variables) for export: BatchNorm folded where the architecture allows, Flax's
    own layers (no custom-gradient CPU kernels), inference-only variables."""
    # Same parameters; the CPU kernels differ from Flax's layers only in their gradients.
    return models.fold_for_inference(run.model.with_ops("xla"), run.variables)


def inference_function(model, variables: dict, prep: inference.Preprocess):
    """uint8 NHWC images -> float32 logits, weights and normalisation as constants."""

    def predict(images: jax.Array) -> jax.Array:
        x = data.normalize(images, prep.mean, prep.std)
        logits, _ = model.apply(variables, x, train=False)
        return logits.astype(jnp.float32)

    return predict


def input_spec(prep: inference.Preprocess, batch: str = "B") -> jax.ShapeDtypeStruct:
    (b,) = jax.export.symbolic_shape(batch)
    return jax.ShapeDtypeStruct((b, prep.size, prep.size, prep.channels), jnp.uint8)


def export_stablehlo(fn, prep: inference.Preprocess, platforms=PLATFORMS) -> bytes:
    """`jax.export` of `fn` with a symbolic batch dimension, serialized."""
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(input_spec(prep))
    return bytes(exported.serialize())


def load_stablehlo(path: str):
    """A callable images -> logits from a serialized `jax.export` artifact."""
    with open(path, "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    return exported.call


def onnx_available() -> str | None:
    """None if the `[export]` extra is installed, else what is missing."""
    try:
        import jax2onnx  # noqa: F401, PLC0415
        import onnxruntime  # noqa: F401, PLC0415
    except ImportError as e:
        return f"{e.name} is not installed (pip install -e '.[export]')"
    return None


def export_onnx(fn, prep: inference.Preprocess, path: str) -> None:
    """`jax2onnx.to_onnx` with a symbolic batch `B`; raises ExportError naming a failing op."""
    from jax2onnx import to_onnx  # noqa: PLC0415 (optional extra)

    # jax2onnx logs a warning per plugin it cannot import and prints debug lines on stdout.
    logging_std.getLogger("jax2onnx").setLevel(logging_std.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            proto = to_onnx(
                fn,
                inputs=[input_spec(prep)],
                model_name="ltkd_jax_student",
                input_names=["images"],
                output_names=["logits"],
            )
    except Exception as e:  # jax2onnx raises plain errors naming the unsupported primitive
        raise ExportError(f"jax2onnx could not convert the model: {type(e).__name__}: {e}") from e
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())


def onnx_session(path: str):
    import onnxruntime as ort  # noqa: PLC0415 (optional extra)

    options = ort.SessionOptions()
    options.log_severity_level = 3  # one NHWC/NCHW shape-merge warning per ReLU otherwise
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def check_images(run: inference.LoadedRun, n: int = CHECK_IMAGES) -> tuple[np.ndarray, str]:
    """n test images spread over the classes (the split is ordered by label), or random
    uint8 images when the run's dataset is not available here."""
    try:
        test = data.load_task(run.config.data).test
    except Exception as e:  # noqa: BLE001 (any missing-data error: fall back, say so)
        logging.warning("test split unavailable (%s); checking on random images", e)
        rng = np.random.default_rng(0)
        shape = (n, run.preprocess.size, run.preprocess.size, run.preprocess.channels)
        return rng.integers(0, 256, shape, dtype=np.uint8), "random uint8 (no test split here)"
    picks = np.linspace(0, len(test) - 1, num=min(n, len(test))).astype(np.int64)
    batch = next(data.eval_batches(test.subset(picks), batch_size=len(picks)))
    return batch["image"], f"{len(picks)} test images of {run.config.data.name}"


def max_diff(reference: np.ndarray, got: np.ndarray) -> dict:
    """Max abs difference and the tolerance 1e-4 * max(1, max |reference|)."""
    diff = float(np.max(np.abs(np.asarray(got, np.float64) - reference)))
    tolerance = REL_TOLERANCE * max(1.0, float(np.max(np.abs(reference))))
    return {"max_abs_diff": diff, "tolerance": tolerance, "ok": diff <= tolerance}


def onnx_latency(session, prep: inference.Preprocess, batch: int, seconds: float = 1.0) -> float:
    """Median milliseconds per call of `session` on random images of `batch`."""
    x = np.random.default_rng(0).integers(
        0, 256, (batch, prep.size, prep.size, prep.channels), dtype=np.uint8
    )
    session.run(None, {"images": x})  # warm-up
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 3:
        t = time.perf_counter()
        session.run(None, {"images": x})
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def export_run(
    workdir: str,
    out: str,
    *,
    checkpoint: str = "last",
    onnx: bool = True,
    latency: bool = True,
) -> dict:
    """Writes the artifacts of `workdir`'s student into `out` and checks them; see above."""
    run = inference.load_run(workdir, checkpoint)
    os.makedirs(out, exist_ok=True)
    inference.write_metadata(out, run.class_names, run.preprocess)
    model, variables = inference_model(run)
    fn = inference_function(model, variables, run.preprocess)
    images, described = check_images(run)
    reference = np.asarray(inference.logits_fn(run)(run.variables, images), np.float64)
    report = {
        "workdir": run.workdir,
        "step": run.step,
        "model": run.config.model.name,
        "num_params": models.num_params(run.variables["params"]),
        "bn_folded": bool(getattr(model, "foldable", False)),
        "check_images": described,
        "artifacts": {},
    }
    problems = []

    path = os.path.join(out, STABLEHLO_FILE)
    with open(path, "wb") as f:
        f.write(export_stablehlo(fn, run.preprocess))
    check = max_diff(reference, load_stablehlo(path)(images))
    report["artifacts"]["stablehlo"] = {"file": STABLEHLO_FILE, "bytes": os.path.getsize(path)}
    report["artifacts"]["stablehlo"].update(check)
    if not check["ok"]:
        problems.append(f"StableHLO logits differ by {check['max_abs_diff']:.3g}")

    missing = onnx_available() if onnx else "not requested (--no-onnx)"
    if missing:  # an optional extra: StableHLO alone is a complete export
        report["artifacts"]["onnx"] = {"skipped": missing}
        logging.warning("no ONNX model written: %s", missing)
    else:
        path = os.path.join(out, ONNX_FILE)
        try:
            export_onnx(fn, run.preprocess, path)
        except ExportError as e:
            report["artifacts"]["onnx"] = {"error": str(e)}
            problems.append(str(e))
        else:
            session = onnx_session(path)
            entry = {"file": ONNX_FILE, "bytes": os.path.getsize(path)}
            entry.update(max_diff(reference, session.run(None, {"images": images})[0]))
            if latency:
                entry["cpu_latency_ms"] = {
                    str(b): onnx_latency(session, run.preprocess, b) for b in (1, 64)
                }
            report["artifacts"]["onnx"] = entry
            if not entry["ok"]:
                problems.append(f"ONNX logits differ by {entry['max_abs_diff']:.3g}")
    with open(os.path.join(out, REPORT_FILE), "w") as f:
        json.dump(report, f, indent=2)
    if problems:
        raise ExportError(
            "; ".join(problems) + f" (report in {os.path.join(out, REPORT_FILE)}; the "
            "artifacts that passed are kept)"
        )
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['model']} ({report['num_params']:,} parameters), step {report['step']}"]
    for name, a in report["artifacts"].items():
        if "bytes" not in a:
            lines.append(f"  {name}: {a.get('skipped') or a.get('error')}")
            continue
        line = (
            f"  {name}: {a['file']} {a['bytes'] / 2**20:.2f} MiB, max |logit diff| "
            f"{a['max_abs_diff']:.2e} (tolerance {a['tolerance']:.1e}) on {report['check_images']}"
        )
        if "cpu_latency_ms" in a:
            ms = a["cpu_latency_ms"]
            line += f"; onnxruntime CPU {ms['1']:.2f} ms at batch 1, {ms['64']:.1f} ms at batch 64"
        lines.append(line)
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ltkd_jax.export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--workdir", required=True, help="a finished run's workdir")
    parser.add_argument("--out", required=True, help="folder for the artifacts")
    parser.add_argument("--checkpoint", default="last", help="last, best (test top-1) or a step")
    parser.add_argument(
        "--onnx",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also write model.onnx (needs the [export] extra)",
    )
    parser.add_argument(
        "--latency",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="time onnxruntime on the CPU at batch 1 and 64",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cli.quiet_logging()
    logging.set_verbosity(logging.WARNING)  # orbax logs a dozen lines per restore
    try:
        report = export_run(
            args.workdir,
            args.out,
            checkpoint=args.checkpoint,
            onnx=args.onnx,
            latency=args.latency,
        )
    except ExportError as e:  # an artifact that does not match: a failure, not a usage error
        print(f"export failed: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:  # the workdir or the checkpoint
        print(f"error: {e}", file=sys.stderr)
        return cli.USAGE_EXIT_CODE
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
