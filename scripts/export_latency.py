"""Size and onnxruntime CPU latency of exported CIFAR-100 students (README "Deploy the student").

    python scripts/export_latency.py --models=resnet8,resnet32,resnet8x4 --seconds=2

Random-init weights (size and latency do not depend on the values), BatchNorm folded and
normalisation included, exactly as `python -m ltkd_jax.export` builds the function. Needs the
`[export]` extra. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jax
import jax.numpy as jnp

from ltkd_jax import data, models
from ltkd_jax.deploy import export, inference


def measure(name: str, num_classes: int, seconds: float) -> dict:
    model = models.get_model(name, num_classes)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    folded, folded_vars = models.fold_for_inference(model, variables)
    prep = inference.Preprocess(32, 3, data.CIFAR_MEAN, data.CIFAR_STD, 1.0)
    fn = export.inference_function(folded, folded_vars, prep)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, export.ONNX_FILE)
        export.export_onnx(fn, prep, onnx_path)
        session = export.onnx_session(onnx_path)
        return {
            "model": name,
            "params": models.num_params(variables["params"]),
            "stablehlo_mib": len(export.export_stablehlo(fn, prep)) / 2**20,
            "onnx_mib": os.path.getsize(onnx_path) / 2**20,
            "ms_b1": export.onnx_latency(session, prep, 1, seconds),
            "ms_b64": export.onnx_latency(session, prep, 64, seconds),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet8,resnet32,resnet8x4")
    parser.add_argument("--num_classes", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per batch size")
    args = parser.parse_args()
    print("| student | parameters | StableHLO | ONNX | batch 1 | batch 64 |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        r = measure(name, args.num_classes, args.seconds)
        print(
            f"| {r['model']} | {r['params'] / 1e6:.2f} M | {r['stablehlo_mib']:.2f} MiB | "
            f"{r['onnx_mib']:.2f} MiB | {r['ms_b1']:.2f} ms | {r['ms_b64']:.1f} ms |",
            flush=True,
        )


if __name__ == "__main__":
    main()
