"""What every command line of the package shares: one message and exit 2 for a usage
error (`--verbose` adds the traceback), flag parsing that never shows a traceback, a
config file that does not load named as such, and logging without the known-harmless
chatter of orbax, grain and tfds. Used by `ltkd_jax.main`, `predict`, `evaluate`,
`export` and `scripts/{compare,reproduce}.py`."""

from __future__ import annotations

import logging as logging_std
import os
import sys
import threading
import traceback
from typing import NoReturn

from absl import app, flags, logging

USAGE_EXIT_CODE = 2  # a mistake in the command line, config or data: fix it and rerun
# Read from sys.argv by `usage_error`; defined here so every absl command accepts it.
VERBOSE = flags.DEFINE_bool("verbose", False, "Show the traceback of a usage error too.")
_HELP = ("-h", "-?", "-help", "--help", "-helpshort", "--helpshort")

# Third-party messages that are harmless, or that our own message for the same checkpoint
# repeats with its fix: (source path fragment, message start).
_HARMLESS = (
    ("/orbax/", "Given directory is read only"),  # every read-only (teacher) load
    ("/orbax/", "Requested `tracked_metric`; did not provide metrics"),  # preemption save
    # A partial restore of one item of a composite checkpoint looks for that item's own
    # metadata file; orbax writes it once per step, beside the items.
    ("/orbax/", "Metadata file does not exist"),
    # An unreadable checkpoint's metadata: the error that follows names the directory.
    ("/orbax/", "Failed to get item metadata from directory"),
    ("/orbax/", "Failed to json parse Metadata file"),
    ("/tensorflow_datasets/", "OpenCV is not installed"),  # PIL decodes our images
    # Every prepared folder has its own builder config (data/image_builders.py), and the
    # version folder is probed before it is first prepared.
    ("/tensorflow_datasets/", "Using custom data configuration"),
    ("/tensorflow_datasets/", "Variant folder"),
)
# Libraries whose INFO lines are dropped (warnings are kept): orbax and grain log a dozen
# lines per checkpoint, tfds a few per dataset load; ltkd_jax logs what matters of them.
_CHATTY = ("/orbax/", "/grain/", "/tensorflow_datasets/")


class _QuietLibraries(logging_std.Filter):
    """Drops the INFO chatter of `_CHATTY` libraries, the messages in `_HARMLESS`, and the
    tracebacks orbax's background threads log for a failed save or read: orbax raises that
    failure again in the main thread, where it becomes one message
    (training/checkpointing.py). Every other warning is kept."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        path = record.pathname.replace(os.sep, "/")
        if any(part in path and record.getMessage().startswith(msg) for part, msg in _HARMLESS):
            return False
        if "/orbax/" in path and record.exc_info:
            return False
        noisy = any(part in path for part in _CHATTY)
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


def quiet_logging() -> tuple[logging_std.Filter, ...]:
    """Routes Python logging through absl's handler with `_QuietLibraries` (once per
    process); returns the handler's filters (run.log gets them too)."""
    logging.use_absl_handler()
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
        handler.addFilter(_QuietLibraries())
        logging_std.getLogger("jax._src.xla_bridge").addFilter(_NoTpuProbe())
    sys.unraisablehook = _quiet_unraisable
    threading.excepthook = _quiet_thread_errors
    return tuple(handler.filters)


class _TqdmStream:
    """stderr through `tqdm.write`, so log lines go above an active progress bar."""

    def write(self, text: str) -> None:
        from tqdm import tqdm  # noqa: PLC0415

        tqdm.write(text.rstrip("\n"), file=sys.stderr)

    def flush(self) -> None:
        sys.stderr.flush()

    def close(self) -> None:
        """stderr stays open (absl closes its handler's stream at exit)."""


def console_logging() -> tuple[logging_std.Filter, ...]:
    """`quiet_logging` for a training command: log lines go above the progress bar."""
    filters = quiet_logging()
    logging.get_absl_handler().python_handler.stream = _TqdmStream()
    return filters


def usage_error(message: str, error: BaseException | None = None) -> NoReturn:
    """Prints `message` (plus the traceback under --verbose) and exits 2."""
    if error is not None and "--verbose" in sys.argv:
        traceback.print_exception(error)
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(USAGE_EXIT_CODE)


def _chain(error: BaseException) -> list[BaseException]:
    """The error and its causes, outermost first."""
    out = []
    while error is not None and error not in out:
        out.append(error)
        error = error.__cause__ or error.__context__
    return out


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


def flag_error_message(error: BaseException, argv: list[str]) -> str:
    """One line for a flag that does not parse. A typo'd config field names the flag and
    ml_collections' "did you mean" hint, which it buries in a KeyError's repr; an error
    raised by a config file's `get_config` (e.g. an unknown `:key=value` argument) is shown
    itself, not ml_collections' "Error whilst parsing config file" wrapper."""
    chain = _chain(error)
    for seen in chain:
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
    text = str(error)
    if "Error whilst parsing config file" in text and len(chain) > 1:
        flag = text.split(": Error whilst", 1)[0].removeprefix("flag ")
        return f"{flag}: {_first_line(chain[-1])}"
    return _first_line(error)


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
        usage_error(flag_error_message(e, argv), e)


def loaded_config(holder: flags.FlagHolder):
    """The value of a `config_flags.DEFINE_config_file` flag. ml_collections defers a file
    that cannot be loaded (a wrong path) to the first use of the config; here it is a usage
    error naming the path."""
    config = holder.value
    if config is None:
        usage_error(f"--{holder.name} is required, e.g. --{holder.name} configs/quickstart.py")
    try:
        config.keys()
    except OSError as e:  # the last line of ml_collections' report names the file
        reason = str(_chain(e)[-1]).strip().splitlines()[-1].strip()
        usage_error(
            f"--{holder.name} cannot be loaded: {reason}. The config files are in the "
            "checkout's configs/ folder (e.g. configs/quickstart.py): run from the checkout's "
            "root or pass the file's full path.",
            e,
        )
    return config


def check_job(config, workdir: str) -> None:
    """What a job checks before any data is read or anything written: the config's values,
    the paths it names (data root, teacher and init runs; `job.check`) and the workdir
    (UserError)."""
    from ltkd_jax.runs import job, rundir  # noqa: PLC0415 (imports JAX; the flags do not)

    job.check(config, workdir)
    rundir.check_workdir(workdir)


def run_job(config, workdir: str, filters=(), *, primary: bool = True, **job_options):
    """`job.run(config, workdir)` as the command line runs it: the workdir locked, the log
    copied into WORKDIR/run.log, a resumed run's config and data checked (`job.check_resume`),
    the invocation recorded, SIGTERM / Ctrl-C turned into a checkpoint. Returns the job's
    summary, or None when it was stopped by a signal (the checkpoint is saved; the same
    command resumes)."""
    import jax  # noqa: PLC0415

    from ltkd_jax.runs import job, rundir  # noqa: PLC0415
    from ltkd_jax.training import preemption  # noqa: PLC0415

    with (
        rundir.hold(workdir, locking=primary),
        rundir.log_to_file(workdir, tuple(filters), enabled=primary),
    ):
        overridden = job.check_resume(config, workdir)
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
            return job.run(config, workdir, **job_options)
        except preemption.Preempted as e:
            logging.warning("%s", e)  # exit 0: the rerun resumes
            return None
