"""Multi-host on CPU: 2 processes x 4 devices over loopback (jax.distributed + gloo) give the
same training losses and evaluation as 1 process with 8 devices (style.md 2.b)."""

import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
from conftest import REPO_ROOT

from ltkd_jax import train
from ltkd_jax.writers import read_jsonl

TIMEOUT_S = 240  # Per process; a hung collective fails the test instead of CI.

TINY_CONFIG = textwrap.dedent(
    '''
    """Digits-LT, ResNet-8, 2 epochs x 3 steps (tests/test_multihost.py).

        python -m ltkd_jax.main --config tiny.py --workdir /tmp/x
    """

    from ltkd_jax import config_lib


    def get_config(arg=None):
        c = config_lib.base_config()
        c.data.name = "digits"
        c.data.imbalance_factor = 10.0
        c.data.augment = "cifar"
        c.data.many_threshold, c.data.few_threshold = 50, 20
        c.model.name = "resnet8"
        c.batch_size = 32
        c.num_epochs = 2
        c.max_steps_per_epoch = 3
        c.eval_batch_size = 200
        c.log_every_steps = 1
        c.optim.lr, c.optim.warmup_epochs, c.optim.decay_epochs = 0.05, 1, (1,)
        c.progress_bar = False
        return config_lib.lock(c)
    '''
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load_config(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_multihost", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def _records(workdir, split):
    return [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == split]


def test_two_processes_match_one_process(tmp_path):
    config_path = tmp_path / "tiny.py"
    config_path.write_text(TINY_CONFIG)
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
    train.train_and_evaluate(_load_config(config_path), str(single))

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
