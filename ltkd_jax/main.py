"""Command-line entry point.

    python -m ltkd_jax.main --config configs/ce_cifar.py --workdir runs/ce_c100 \
        --config.data.archive=../shared/data/cifar100-png.zip --config.num_epochs=2

Everything lives in importable modules (`ltkd_jax.train`) so tests and notebooks drive
the same code; this file only parses flags, starts multi-host JAX when asked, and calls
`train.run`. Running the same command again resumes from the workdir's last checkpoint.
"""

from __future__ import annotations

import logging as logging_std
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file under configs/.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.")
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
# Reads --jax_* flags (e.g. --jax_num_cpu_devices=8); before the required-flag validators,
# which would otherwise fire on this partial parse.
jax.config.parse_flags_with_absl()
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging_std.Filter):
    """Drops the INFO chatter of orbax and grain (a dozen lines per checkpoint)."""

    def filter(self, record: logging_std.LogRecord) -> bool:
        noisy = any(part in record.pathname for part in ("/orbax/", "/grain/"))
        return record.levelno >= logging_std.WARNING or not noisy


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if _DISTRIBUTED.value:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    logging.info(
        "JAX %s, process %d/%d, devices: %s",
        jax.__version__,
        jax.process_index(),
        jax.process_count(),
        jax.devices(),
    )
    from ltkd_jax import train  # after distributed init: importing may touch the backend

    train.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
