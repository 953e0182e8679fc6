r"""Command-line entry point.

    python -m ltkd_jax.main --config configs/ce_cifar.py --workdir runs/ce_c100 \
        --config.data.archive=/path/to/cifar100-png.zip --config.num_epochs=2

`--print_config` lists every config field with its value and meaning. Running the same
command again resumes from the workdir's last checkpoint; SIGTERM or Ctrl-C saves a
checkpoint at the next step and exits 0. A mistake in the command line or config prints
one message and exits 2 (`--verbose` adds the traceback).

Everything lives in importable modules (`ltkd_jax.runs.job`, `ltkd_jax.training.trainer`)
so tests and notebooks drive the same code; this file only parses flags, starts multi-host
JAX when asked, and calls `job.run` the way every command does (`ltkd_jax.cli.run_job`).
"""

from __future__ import annotations

import os

import jax
from absl import app, flags
from ml_collections import config_flags

from ltkd_jax import cli, errors
from ltkd_jax.config import defaults

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file under configs/.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
_PRINT_CONFIG = flags.DEFINE_bool(
    "print_config", False, "Print every field of --config with its value and comment, then exit."
)
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

USAGE_EXIT_CODE = cli.USAGE_EXIT_CODE
parse_flags = cli.parse_flags  # `app.run(main, flags_parser=parse_flags)`, also in tests
usage_error = cli.usage_error


def main(argv):
    if len(argv) > 1:
        usage_error(f"unexpected arguments: {argv[1:]}")
    config, workdir = cli.loaded_config(_CONFIG), _WORKDIR.value
    if _PRINT_CONFIG.value:
        print(defaults.describe_config(config))
        return
    if not workdir:
        usage_error("--workdir is required: where the run's checkpoints and metrics go")
    filters = cli.console_logging()
    try:
        cli.check_job(config, workdir)
        if _DISTRIBUTED.value:
            jax.distributed.initialize(
                coordinator_address=_COORDINATOR.value,
                num_processes=_NUM_PROCESSES.value,
                process_id=_PROCESS_ID.value,
            )
        # Process 0 locks; without --distributed this asks no backend (a refused run is fast).
        primary = not _DISTRIBUTED.value or jax.process_index() == 0
        cli.run_job(config, workdir, filters, primary=primary)
    except errors.UserError as e:
        usage_error(str(e), e)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
