"""A tiny trained run shared by the deploy tests (predict, evaluate, export), trained once
per test session, and its digits test split written out as a `<class>/<image>` PNG tree."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image
from tiny import tiny_config

from ltkd_jax import data
from ltkd_jax.runs import job
from ltkd_jax.runs.summary import summarize_run

_RUNS: dict[str, str] = {}


def tiny_run(tmp_path_factory) -> str:
    """The workdir of a finished tiny digits run (job.run: it also writes the report)."""
    if "run" not in _RUNS:
        workdir = str(tmp_path_factory.mktemp("deploy") / "run")
        job.run(tiny_config(), workdir)
        _RUNS["run"] = workdir
    return _RUNS["run"]


def digits_test_folder(root: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Writes the run's digits test split as root/<class>/<index>.png (8-bit grayscale);
    returns (paths in split order, uint8 images [N, 8, 8, 1], labels)."""
    test = data.load_task(tiny_config().data).test
    paths = []
    for i, (image, label) in enumerate(zip(test.images, test.labels, strict=True)):
        folder = os.path.join(root, test.class_names[label])
        os.makedirs(folder, exist_ok=True)
        paths.append(os.path.join(folder, f"{i:04d}.png"))
        Image.fromarray(image[..., 0]).save(paths[-1])
    return paths, test.images, test.labels


def final_test_record(workdir: str) -> dict:
    """The trainer's last test evaluation of a run (what it printed)."""
    return summarize_run(workdir)["final"]
