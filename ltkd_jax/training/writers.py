"""Metric writers: absl logging, JSON lines and TensorBoard, written by process 0 only.

`clu.metric_writers` imports TensorFlow at module load , so this is the
same `write_scalars(step, dict)` interface in a few lines over tensorboardX.

The metrics file matches the checkpoint a run resumes from: `trim_after(step)` drops the
records a killed run wrote after its last checkpoint (they are written again), a torn last
line (a kill mid-write) is dropped with a warning, and TensorBoard is told to discard the
events after `step` (`purge_step`). `sync()` makes the records durable; the trainer calls it
before every checkpoint save, so a committed checkpoint never covers a record a machine
crash could still lose (the trainer evaluates a restored checkpoint again when its record
is missing: `missing_splits`). Non-finite scalars (the accuracy of an empty shot group) go
to the JSON file only: TensorBoard cannot plot them.
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
        self._path = os.path.join(workdir, filename)
        self._tb_dir = os.path.join(workdir, "tensorboard") if tensorboard else None
        self._purge_step = None
        drop_torn_tail(self._path)
        self._jsonl = open(self._path, "a")  # noqa: SIM115 - closed in close()

    @property
    def path(self) -> str:
        """The metrics file (process 0 only)."""
        return self._path

    def trim_after(self, step: int) -> None:
        """Drops the records after `step` (the step a run resumes from), here and in
        TensorBoard, so a resumed run's metrics hold each step once."""
        if not self.active:
            return
        self._jsonl.close()
        dropped = trim_jsonl(self._path, step)
        if dropped:
            logging.info(
                "%s: dropped %d record(s) after step %d, written after the last checkpoint",
                self._path,
                dropped,
                step,
            )
        self._jsonl = open(self._path, "a")  # noqa: SIM115 - closed in close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._purge_step = step + 1 if step else None

    def _tensorboard(self):
        if self._tb is None and self._tb_dir is not None:
            from tensorboardX import SummaryWriter

            # TensorBoard discards earlier events at steps >= purge_step (a resumed run).
            self._tb = SummaryWriter(self._tb_dir, purge_step=self._purge_step)
        return self._tb

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
        tb = self._tensorboard()
        for key, value in record.items():
            plottable = isinstance(value, (int, float)) and np.isfinite(value)
            if tb is not None and plottable and key != "step":
                tb.add_scalar(key, value, int(step))
        if not log:
            return
        shown = {k: v for k, v in record.items() if not isinstance(v, list)}
        logging.info("step %d: %s", step, ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()))

    def write_json(self, name: str, obj) -> None:
        """Writes a whole JSON file into the workdir (the config, a final summary)."""
        if not self.active:
            return
        path = os.path.join(os.path.dirname(self._path), name)
        with open(path, "w") as f:
            json.dump(obj, f, indent=2, default=_to_python)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def sync(self) -> None:
        """Puts every record written so far on the disk (fsync), before a checkpoint that
        covers them is committed."""
        if self._jsonl is not None:
            self._jsonl.flush()
            os.fsync(self._jsonl.fileno())

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(value) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def _parse_lines(path: str) -> tuple[list[dict], bool]:
    """(records, whether a torn last line was skipped)."""
    with open(path) as f:
        lines = [line for line in f.read().split("\n") if line.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                return records, True
            raise ValueError(f"{path}, line {i + 1}, is not JSON ({e}); fix or remove it") from e
    return records, False


def read_jsonl(path: str) -> list[dict]:
    """Reads a metrics file back (tests, scripts/compare.py); a torn last line (a run killed
    mid-write) is skipped with a warning."""
    records, torn = _parse_lines(path)
    if torn:
        logging.warning("%s: ignoring its torn last line (a run killed mid-write)", path)
    return records


def current_records(records: list[dict]) -> list[dict]:
    """The records of the run as it stands: when a resumed run went back to an earlier step
    (files written before trimming existed), the earlier records after that step go."""

    def replaced_by(old: dict, new: dict) -> bool:
        same = old.get("split") == new.get("split") and old.get("tau") == new.get("tau")
        return old["step"] > new["step"] or (old["step"] == new["step"] and same)

    out: list[dict] = []
    for record in records:
        while out and replaced_by(out[-1], record):
            out.pop()
        out.append(record)
    return out


def read_metrics(path: str) -> list[dict]:
    """`current_records` of a metrics file: what summaries and comparisons read."""
    return current_records(read_jsonl(path))


def drop_torn_tail(path: str) -> None:
    """Cuts an unterminated last line (a kill mid-write), so appends start on a new line."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb") as f:
        data = f.read()
    if data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    logging.warning(
        "%s: dropped its torn last line (%d bytes, a run killed mid-write)", path, len(data) - keep
    )
    os.truncate(path, keep)


def trim_jsonl(path: str, step: int) -> int:
    """Drops the records after `step` (atomically: a kill leaves the old or the new file);
    returns how many went."""
    if not os.path.exists(path):
        return 0
    records, torn = _parse_lines(path)
    keep = [r for r in current_records(records) if r["step"] <= step]
    dropped = len(records) - len(keep) + int(torn)
    if dropped:
        with open(path + ".tmp", "w") as f:
            f.write("".join(json.dumps(r) + "\n" for r in keep))
            f.flush()
            os.fsync(f.fileno())  # the new file is whole on disk before it replaces the old
        os.replace(path + ".tmp", path)
    return dropped


def missing_splits(path: str, step: int, splits: tuple[str, ...]) -> list[str]:
    """Those of `splits` without a current record at `step` in the metrics file (a torn or
    lost last line)."""
    if not os.path.exists(path):
        return list(splits)
    present = {r.get("split") for r in read_metrics(path) if r["step"] == step}
    return [split for split in splits if split not in present]
