"""Using a finished run: classify image files (`predict`), evaluate a labelled folder
(`evaluate`), export StableHLO / ONNX (`export`), the evaluation report and its plots
(`report`), and image files preprocessed as the run's evaluation does (`inference`).

Each command also runs as `python -m ltkd_jax.<command>`."""
