"""The command line with one fault injected, for tests/test_fault_injection.py.

    python tests/fault_runner.py POINT N -- <ltkd_jax.main arguments>

POINT is where the process kills itself the N-th time it gets there:
  save  SIGKILL just after the N-th checkpoint save starts (orbax writes it in the background)
  eval  SIGKILL inside the N-th evaluation, before its results are written
  step  SIGKILL after the N-th chunk of training batches is planned, before it finishes
  term  SIGTERM (preemption) at the N-th chunk: checkpoint at its end, exit 0
  none  no fault
"""

import os
import signal
import sys


def _at_nth(n: int):
    seen = {"count": 0}

    def hit() -> bool:
        seen["count"] += 1
        return seen["count"] == n

    return hit


def _wrap(module, name: str, before=None, after=None) -> None:
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        if before is not None:
            before()
        out = real(*args, **kwargs)
        if after is not None:
            after()
        return out

    setattr(module, name, wrapped)


def main() -> None:
    point, n, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: fault_runner.py POINT N -- ARGS"
    from absl import app

    from ltkd_jax import main as cli
    from ltkd_jax.training import checkpointing, feeds, metrics

    hit = _at_nth(int(n))

    def kill(signum):
        return lambda: hit() and os.kill(os.getpid(), signum)

    if point == "save":
        _wrap(checkpointing, "save", after=kill(signal.SIGKILL))
    elif point == "eval":
        _wrap(metrics, "summarize", before=kill(signal.SIGKILL))
    elif point == "step":
        _wrap(feeds.DeviceFeed, "plan", after=kill(signal.SIGKILL))
    elif point == "term":
        _wrap(feeds.DeviceFeed, "plan", after=kill(signal.SIGTERM))
    elif point != "none":
        raise SystemExit(f"unknown fault point {point!r}")
    app.run(cli.main, argv=["ltkd_jax.main", *argv], flags_parser=cli.parse_flags)


if __name__ == "__main__":
    main()
