r"""Command-line entry point.

    python -m ltkd_jax.main --config configs/ce_cifar.py --workdir runs/ce_c100 \
        --config.data.archive=/path/to/cifar100-png.zip --config.num_epochs=2

`--print_config` lists every config field with its value and meaning. Running the same
command again resumes from the workdir's last checkpoint; SIGTERM or Ctrl-C saves a
checkpoint at the next step and exits 0. A mistake in the command line or config prints
one message and exits 2 (`--verbose` adds the traceback).

Everything lives in importable modules (`ltkd_jax.runs.job`, `ltkd_jax.training.trainer`)
so tests and notebooks drive the same code; this file only parses flags, starts multi-host JAX
when asked, and calls `job.check` and `job.run`.
"""

from __future__ import annotations

import logging as logging_std
import os
import sys
import threading
import traceback

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from ltkd_jax import errors
from ltkd_jax.config import defaults
from ltkd_jax.runs import rundir
from ltkd_jax.training import preemption

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file under configs/.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print every field of --config with its value and comment, then exit."
)
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the traceback of a usage error too.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    os.environ.get("LTKD_JAX_DISTRIBUTED", "") == "1",
    "Call jax.distributed.initialize() first (multi-host: TPU pods, multi-node GPU). "
    "Also enabled by LTKD_JAX_DISTRIBUTED=1.",
)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (not needed on Cloud TPU)."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
# Reads --jax_* flags (e.g. --jax_num_cpu_devices=8).
jax.config.parse_flags_with_absl()

USAGE_EXIT_CODE = 2
_HELP = ("-h", "-?", "-help", "--help", "-helpshort", "--helpshort")

# Third-party messages that are harmless, or that our own message for the same checkpoint
# repeats with its fix: (source path fragment, message start).
_HARMLESS = (
    ("/orbax/", "Given directory is read only"),  # every read-only (teacher) load
    ("/orbax/", "Requested `tracked_metric`; did not provide metrics"),  # preemption save
    # A teacher's parameter names are read from its `state` item, whose directory never
    # holds the step's metadata file (training/checkpointing.py saved_param_names).
    ("/orbax/", "Metadata file does not exist"),
    # An unreadable checkpoint's metadata: the error that follows names the directory.
    ("/orbax/", "Failed to get item metadata from directory"),
    ("/orbax/", "Failed to json parse Metadata file"),
    ("/tensorflow_datasets/", "OpenCV is not installed"),  # PIL decodes our images
)


class _QuietLibraries(logging_std.Filter):
    """Drops the INFO chatter of orbax and grain (a dozen lines per checkpoint), the
    messages in `_HARMLESS`, and the tracebacks orbax's background threads log
    for a failed save or read: orbax raises that failure again in the main thread, where
    it becomes one message (training/checkpointing.py). Every other warning is kept."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        path = record.pathname.replace(os.sep, "/")
        if any(part in path and record.getMessage().startswith(msg) for part, msg in _HARMLESS):
            return False
        if "/orbax/" in path and record.exc_info:
            return False
        noisy = any(part in path for part in ("/orbax/", "/grain/"))
        return record.levelno >= logging_std.WARNING or not noisy


# Raised in tensorstore / orbax threads that deliver a result after the event loop that
# asked for it closed (an aborted read or save, or the interpreter shutting down); the
# failure itself reaches the main thread.
_HARMLESS_UNRAISABLE = ("Event loop is closed", "sys.meta_path is None")


def _quiet_unraisable(unraisable) -> None:
    """sys.unraisablehook without the `_HARMLESS_UNRAISABLE` tracebacks."""
    if not any(text in str(unraisable.exc_value) for text in _HARMLESS_UNRAISABLE):
        sys.__unraisablehook__(unraisable)


def _quiet_thread_errors(args) -> None:
    """threading.excepthook without them (a background thread failing at shutdown)."""
    if not any(text in str(args.exc_value) for text in _HARMLESS_UNRAISABLE):
        threading.__excepthook__(args)


class _NoTpuProbe(logging_std.Filter):
    """jax logs the failed probe of every absent backend (TPU on a CPU / GPU machine)."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        return not record.getMessage().startswith("Unable to initialize backend")


class _TqdmStream:
    """stderr through `tqdm.write`, so log lines go above an active progress bar."""

    def write(self, text: str) -> None:
        from tqdm import tqdm

        tqdm.write(text.rstrip("\n"), file=sys.stderr)

    def flush(self) -> None:
        sys.stderr.flush()

    def close(self) -> None:
        """stderr stays open (absl closes its handler's stream at exit)."""


def usage_error(message: str, error: BaseException | None = None) -> None:
    """Prints `message` (plus the traceback under --verbose) and exits 2."""
    if error is not None and "--verbose" in sys.argv:
        traceback.print_exception(error)
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_EXIT_CODE)


def _flag_error_message(error: BaseException, argv: list[str]) -> str:
    """One line for a flag that does not parse; a typo'd config field names the flag and
    ml_collections' "did you mean" hint, which it buries in a KeyError's repr."""
    seen = error
    while seen is not None:
        if isinstance(seen, KeyError) and seen.args and isinstance(seen.args[0], str):
            key, _, hint = seen.args[0].partition("\n")
            key = key.strip("'\"")
            names = [a.split("=")[0] for a in argv if a.startswith("--config.")]
            flag = next((n for n in names if n.endswith("." + key)), f"--config...{key}")
            hint = f" {hint.strip()}" if hint.strip() else ""
            if flag.startswith("--config.loss."):  # another method's hyper-parameter
                hint += (
                    " config.loss holds only the config's own method's hyper-parameters; for"
                    " another method start from its config file (configs/<method>_cifar.py)."
                )
            return f"{flag}: the config has no field {key!r}.{hint} (--print_config lists them)"
        seen = seen.__cause__ or seen.__context__
    return str(error).strip().splitlines()[0] if str(error).strip() else repr(error)


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser with clean failures: --help exits 0, a bad flag prints one line, exit 2."""
    if any(arg in (*_HELP, "--helpfull", "-helpfull") for arg in argv[1:]):
        app.usage(
            shorthelp="--helpfull" not in argv and "-helpfull" not in argv, writeto_stdout=True
        )
        sys.exit(0)
    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 - every parse failure is the user's to fix
        usage_error(_flag_error_message(e, argv), e)


def _set_up_logging() -> list[logging_std.Filter]:
    filters = [_QuietLibraries()]
    handler = logging.get_absl_handler()
    for f in filters:
        handler.addFilter(f)
    handler.python_handler.stream = _TqdmStream()
    logging_std.getLogger("jax._src.xla_bridge").addFilter(_NoTpuProbe())
    sys.unraisablehook = _quiet_unraisable
    threading.excepthook = _quiet_thread_errors
    return filters


def main(argv):
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {argv[1:]}")
    config, workdir = _CONFIG.value, _WORKDIR.value
    if config is None:
        usage_error("--config is required, e.g. --config configs/quickstart.py")
    if _PRINT_CONFIG.value:
        print(defaults.describe_config(config))
        return
    if not workdir:
        usage_error("--workdir is required: where the run's checkpoints and metrics go")
    filters = _set_up_logging()
    try:
        rundir.check_workdir(workdir)
        if _DISTRIBUTED.value:
            jax.distributed.initialize(
                coordinator_address=_COORDINATOR.value,
                num_processes=_NUM_PROCESSES.value,
                process_id=_PROCESS_ID.value,
            )
        from ltkd_jax.runs import job  # after distributed init: importing may touch the backend

        overridden = job.check(config, workdir)  # before anything is written
        # Process 0 locks; without --distributed this asks no backend (a refused run is fast).
        primary = not _DISTRIBUTED.value or jax.process_index() == 0
        with (
            rundir.hold(workdir, locking=primary),
            rundir.log_to_file(workdir, tuple(filters), enabled=primary),
        ):
            if primary:
                rundir.record_invocation(workdir, overrides=overridden)
            logging.info(
                "JAX %s, process %d/%d, devices: %s",
                jax.__version__,
                jax.process_index(),
                jax.process_count(),
                jax.devices(),
            )
            preemption.install_signal_handlers()
            try:
                job.run(config, workdir)
            except preemption.Preempted as e:
                logging.warning("%s", e)  # exit 0: the rerun resumes
    except errors.UserError as e:
        usage_error(str(e), e)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
