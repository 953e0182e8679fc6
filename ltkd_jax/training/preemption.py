"""Preemption: SIGTERM (a preempted Cloud TPU VM) and SIGINT become a stop request.

`install_signal_handlers()` turns both into a flag; the train loop polls it at the end of
every chunk of steps (on several processes: whether any of them got one,
`progress.any_process_stopping`), saves a checkpoint and raises `Preempted`, which the
command line reports and exits 0 on: rerunning the command resumes.
"""

from __future__ import annotations

import signal

from absl import logging

_STOP: dict[str, int | None] = {"signal": None}


class Preempted(Exception):  # noqa: N818 - not an error: the run stopped where asked
    """Raised by the train loop after it saved a checkpoint on SIGTERM / SIGINT."""

    def __init__(self, step: int, workdir: str):
        self.step, self.workdir = step, workdir
        super().__init__(
            f"stopped by {signal_name()}: checkpoint saved at step {step} in {workdir}; "
            "rerun the same command to resume"
        )


def _request_stop(signum, frame) -> None:
    del frame
    if _STOP["signal"] is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # a second Ctrl-C stops at once
    _STOP["signal"] = signum
    logging.warning(
        "%s received: saving a checkpoint at the next step, then exiting (Ctrl-C again to "
        "stop at once)",
        signal.Signals(signum).name,
    )


def install_signal_handlers() -> None:
    """SIGTERM and SIGINT ask the train loop to checkpoint and stop (main thread only)."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _request_stop)


def stop_requested() -> bool:
    """True once SIGTERM or SIGINT arrived; the train loop checks it at step boundaries."""
    return _STOP["signal"] is not None


def signal_name() -> str:
    return signal.Signals(_STOP["signal"]).name if _STOP["signal"] is not None else "request"


def reset_stop() -> None:
    """Clears a stop request (tests; a notebook that keeps going)."""
    _STOP["signal"] = None
