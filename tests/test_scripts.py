"""The benchmark script runs end to end (small model, one step, no PyTorch) and prints rates."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # end-to-end: `pytest -m "not slow"` skips it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARK = os.path.join(ROOT, "scripts", "benchmark.py")
SMALL = ["--model=resnet8", "--steps=1", "--repeats=1", "--notorch", "--cpu_kernels=on"]
# The median images/s: before the min-max spread in the step table, before "images/s" in --convs.
STEP_RATE = re.compile(r"(\d+\.\d+)\s+\d+-\d+")
CONV_RATE = re.compile(r"(\d+\.\d+) images/s")


@pytest.mark.parametrize(
    "flags, rows, rate",
    [
        (
            ["--nomemory"],
            ["teacher step (CE)    ltkd_jax cpu on", "student step (BKD)   ltkd_jax cpu on"]
            + ["eval                 ltkd_jax cpu on"],
            STEP_RATE,
        ),
        (
            ["--convs"],
            ["train  ltkd_jax cpu on, convs", "eval   ltkd_jax cpu on, convs"],
            CONV_RATE,
        ),
    ],
    ids=["steps", "convs"],
)
def test_benchmark_prints_a_rate_per_row(flags, rows, rate):
    done = subprocess.run(
        [sys.executable, BENCHMARK, *SMALL, *flags],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for row in rows:
        lines = [line for line in done.stdout.splitlines() if line.startswith(row)]
        assert len(lines) == 1, f"no single {row!r} row in:\n{done.stdout}"
        assert float(rate.search(lines[0]).group(1)) > 0, lines[0]


CIFAR100_ZIP = os.path.join(os.path.dirname(ROOT), "shared", "data", "cifar100-png.zip")


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists(CIFAR100_ZIP), reason="needs ../shared/data/cifar100-png.zip"
)
def test_benchmark_loop_prints_loop_over_pure_ratios():
    done = subprocess.run(
        [
            sys.executable,
            BENCHMARK,
            *SMALL,
            "--loop",
            "--loop_steps=2",
            f"--archive={CIFAR100_ZIP}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ratios = re.findall(r"loop/pure ratio: (\d+\.\d+)", done.stdout)
    assert len(ratios) == 4, done.stdout  # 2 loops x (device-resident, grain feed)
    assert all(float(r) > 0 for r in ratios)
    assert "host memory: peak RSS" in done.stdout
