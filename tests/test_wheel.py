"""The package works installed as a wheel, not only as an editable checkout: nothing in it
reads files of the repository (configs/, docs/) by path."""

import os
import pathlib
import shutil
import site
import subprocess
import sys
import sysconfig

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow  # builds a wheel and a virtual environment


def _run(cmd: list[str], cwd: pathlib.Path, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory) -> pathlib.Path:
    """A fresh venv holding only the ltkd_jax wheel; its dependencies come from this
    environment's site-packages through a .pth line (no download), which leaves out this
    environment's editable install of the checkout."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy: building writes build/ beside pyproject.toml
    source.mkdir()
    for name in ("ltkd_jax", "pyproject.toml", "README.md"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-w", str(root)], source)
    (wheel,) = root.glob("ltkd_jax-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], root)
    python = venv / "bin" / "python"
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], root
    )
    deps = [sysconfig.get_path("purelib"), *site.getsitepackages()]
    pathlib.Path(purelib.strip(), "deps.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], root)
    return python


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> pathlib.Path:
    """A folder outside the repository with a copy of configs/, as a user would have."""
    folder = tmp_path_factory.mktemp("user")
    shutil.copytree(REPO / "configs", folder / "configs")
    return folder


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "JAX_PLATFORMS": "cpu"}


def test_the_wheel_is_what_runs(wheel_python, user_dir):
    where = _run([str(wheel_python), "-c", "import ltkd_jax; print(ltkd_jax.__file__)"], user_dir)
    assert "site-packages" in where and str(REPO) not in where


def test_print_config_of_a_folder_recipe_with_another_method(wheel_python, user_dir):
    out = _run(
        [
            str(wheel_python),
            "-m",
            "ltkd_jax.main",
            "--config",
            "configs/folder.py:method=kd",
            "--print_config",
        ],
        user_dir,
        _env(),
    )
    assert "method = 'kd'" in out and "data.name = 'folder'" in out


def test_a_one_epoch_quick_start(wheel_python, user_dir, tmp_path):
    out = _run(
        [
            str(wheel_python),
            "-m",
            "ltkd_jax.main",
            "--config",
            "configs/quickstart.py",
            f"--workdir={tmp_path / 'run'}",
            "--config.num_epochs=1",
            "--config.teacher.num_epochs=1",
            "--config.progress_bar=false",
        ],
        user_dir,
        _env(),
    )
    assert "teacher" in out and "bkd" in out and "final (epoch 1)" in out
