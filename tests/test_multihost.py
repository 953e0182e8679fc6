"""Multi-host on CPU: 2 processes x 4 devices over loopback (jax.distributed + gloo) give the
same training losses and evaluation as 1 process with 8 devices (the flax/big_vision data-parallel
pattern)."""

import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
import tiny
from conftest import REPO_ROOT

from ltkd_jax.training import trainer
from ltkd_jax.training.writers import read_jsonl

pytestmark = pytest.mark.slow  # end-to-end: `pytest -m "not slow"` skips it

TIMEOUT_S = 240  # Per process; a hung collective fails the test instead of CI.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(workdir, split):
    return [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == split]


def test_two_processes_match_one_process(tmp_path):
    config_path = pathlib.Path(tiny.__file__)
    port = _free_port()
    multi = tmp_path / "multi"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ltkd_jax.main",
                f"--config={config_path}",
                f"--workdir={multi}",
                "--distributed",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                "--jax_num_cpu_devices=4",
                "--jax_cpu_collectives_implementation=gloo",
            ],
            cwd=str(REPO_ROOT),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT_S)
            outputs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-4000:]}"

    # Reference: this pytest process has 8 CPU devices (conftest.py).
    single = tmp_path / "single"
    trainer.train_and_evaluate(tiny.tiny_config(**tiny.MULTIHOST_OVERRIDES), str(single))

    multi_train, single_train = _records(multi, "train"), _records(single, "train")
    assert [r["step"] for r in multi_train] == [r["step"] for r in single_train]
    np.testing.assert_allclose(
        [r["loss"] for r in multi_train], [r["loss"] for r in single_train], rtol=1e-4
    )
    multi_test, single_test = _records(multi, "test"), _records(single, "test")
    assert [r["num_examples"] for r in multi_test] == [r["num_examples"] for r in single_test]
    np.testing.assert_allclose(
        [r["top1"] for r in multi_test], [r["top1"] for r in single_test], atol=1e-6
    )
