"""The training loop's bookkeeping: chunks of steps, the per-window train log, the progress
bar, the NaN guard and the multi-host stop vote."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from ltkd_jax.errors import UserError
from ltkd_jax.training import checkpointing, preemption
from ltkd_jax.training.writers import MetricWriter


def first_non_finite(step0: int, chunk: dict) -> tuple[int, dict] | None:
    """(step, bad values) of the first step in a chunk of stacked [K] metrics with a
    non-finite value, or None."""
    finite = np.all([np.isfinite(v) for v in chunk.values()], axis=0)
    if finite.all():
        return None
    i = int(np.argmin(finite))
    return step0 + i + 1, {k: float(v[i]) for k, v in chunk.items() if not np.isfinite(v[i])}


def duration(seconds: float) -> str:
    """'25 s', '7 min', '3 h 05 min': seconds under a minute, so a short stage never reads
    'about 0 min'."""
    if seconds < 60:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


def compile_note(seconds: float, steps: int) -> str:
    """The first chunk's line: its time holds the compilation, so it gives no estimate."""
    return (
        f"first {steps} steps took {duration(seconds)}, compilation included; the time "
        "estimate follows the next chunk"
    )


def time_estimate(seconds_per_step: float, steps_left: int) -> str:
    """The time estimate, from a timed window after compilation (evaluation not included)."""
    return (
        f"{1000 * seconds_per_step:.0f} ms per step: about "
        f"{duration(seconds_per_step * steps_left)} for the remaining {steps_left} steps "
        "(plus evaluation)"
    )


class NonFiniteError(UserError, FloatingPointError):
    """Training produced a non-finite value; the command line prints the message alone and
    exits 2."""


def check_finite(step0: int, chunk: dict, workdir: str, kept: int | None = None) -> None:
    """NonFiniteError at the first non-finite metric of a chunk, saying what is kept: the
    checkpoint at step `kept` (the latest saved or being saved; every metric up to it was
    finite, as this runs before each save), or nothing. The documented recovery resumes
    from it with a lower rate (config.resume_overrides, README "NaN recovery")."""
    bad = first_non_finite(step0, chunk)
    if not bad:
        return
    directory = checkpointing.checkpoint_dir(workdir)
    if kept is None:
        what = (
            "No checkpoint was saved before it: nothing is kept. Rerun with a lower "
            "--config.optim.lr (the run starts again from step 0)"
        )
    else:
        what = (
            f"The checkpoint of step {kept} in {directory} is kept. To resume from it with a "
            "lower learning rate, rerun the same command with a lower --config.optim.lr and "
            "--config.resume_overrides=optim.lr"
        )
    raise NonFiniteError(
        f"non-finite training metrics at step {bad[0]}: {bad[1]}. {what}; if that does not "
        "help, check the data and the loss hyper-parameters."
    )


class TrainLog:
    """Per-step metrics of finished chunks -> one train record per log window.

    Windows end every config.log_every_steps steps and at every epoch end, whatever the
    chunk size, so records land on the same steps on the device and the host path.
    """

    def __init__(self, writer: MetricWriter, config, steps_per_epoch: int, progress):
        self.writer, self.progress = writer, progress
        self.log_every, self.batch_size = config.log_every_steps, config.batch_size
        self.steps_per_epoch = steps_per_epoch
        self.window: list[dict] = []
        self.seconds = 0.0

    def add(self, step0: int, chunk: dict, seconds: float) -> None:
        """Chunk = stacked [K] metrics of steps step0 .. step0 + K - 1 (host numpy)."""
        k = len(next(iter(chunk.values())))
        for i in range(k):
            step = step0 + i + 1
            self.window.append({name: v[i] for name, v in chunk.items()})
            self.seconds += seconds / k
            if step % self.log_every == 0 or step % self.steps_per_epoch == 0:
                self._flush(step)

    def _flush(self, step: int) -> None:
        scalars = {k: float(np.mean([m[k] for m in self.window])) for k in self.window[0]}
        scalars["images_per_sec"] = len(self.window) * self.batch_size / max(self.seconds, 1e-9)
        epoch = (step - 1) // self.steps_per_epoch + 1
        self.writer.write_scalars(
            step, scalars, log=self.progress.disable, epoch=epoch, split="train"
        )
        self.progress.set_postfix(loss=f"{scalars['loss']:.3f}", epoch=epoch)
        self.window, self.seconds = [], 0.0


def chunks(start: int, total: int, steps_per_epoch: int, size: int):
    """(t0, t1) ranges covering [start, total), never crossing an epoch end."""
    t = start
    while t < total:
        epoch_end = (t // steps_per_epoch + 1) * steps_per_epoch
        t1 = min(epoch_end, total, t + size)
        yield t, t1
        t = t1


def progress_bar(config, total: int, initial: int):
    from tqdm import tqdm

    disable = not config.progress_bar or jax.process_index() != 0
    return tqdm(total=total, initial=initial, disable=disable, unit="step", dynamic_ncols=True)


def stack(step_metrics: list[dict]) -> dict:
    """Per-step metric dicts -> one dict of [K] arrays, as `train_chunk` returns them."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *step_metrics)


def any_process_stopping() -> bool:
    """Whether any process got SIGTERM / SIGINT: all of them stop at the same chunk end, so
    a preempted pod saves one consistent checkpoint instead of hanging in a collective."""
    stopping = preemption.stop_requested()
    if jax.process_count() == 1:
        return stopping
    return bool(multihost_utils.process_allgather(np.int32(stopping)).max())
