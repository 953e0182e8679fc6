"""Metric writers: absl logging, JSON lines and TensorBoard, written by process 0 only.

`clu.metric_writers` imports TensorFlow at module load (style.md 2.h), so this is the
same `write_scalars(step, dict)` interface in a few lines over tensorboardX.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import jax
import numpy as np
from absl import logging


def _to_python(value):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and TensorBoard; a no-op on processes > 0."""

    def __init__(self, workdir: str, *, filename: str = "metrics.jsonl", tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if not self.active:
            return
        os.makedirs(workdir, exist_ok=True)
        self._jsonl = open(os.path.join(workdir, filename), "a")  # noqa: SIM115 - closed in close()
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write_scalars(
        self, step: int, scalars: Mapping[str, object], *, log: bool = True, **extra
    ) -> None:
        """Writes one JSON line {'step', **extra, **scalars}; scalars also go to TensorBoard.

        `log=False` keeps the record out of the console log (a progress bar shows it).
        """
        if not self.active:
            return
        record = {"step": int(step), **extra, **{k: _to_python(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in record.items():
            if self._tb is not None and isinstance(value, (int, float)) and key != "step":
                self._tb.add_scalar(key, value, int(step))
        if not log:
            return
        shown = {k: v for k, v in record.items() if not isinstance(v, list)}
        logging.info("step %d: %s", step, ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))

    def write_json(self, name: str, obj) -> None:
        """Writes a whole JSON file into the workdir (the config, a final summary)."""
        if not self.active:
            return
        path = os.path.join(os.path.dirname(self._jsonl.name), name)
        with open(path, "w") as f:
            json.dump(obj, f, indent=2, default=_to_python)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(value) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def read_jsonl(path: str) -> list[dict]:
    """Reads a metrics file back (tests, scripts/compare.py)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
