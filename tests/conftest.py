"""Test set-up: 8 simulated CPU devices, parsed absl flags, a persistent compile cache."""

import functools
import importlib.util
import os
import pathlib
import sys
import types

import jax
import pytest
from absl import flags

# Must run before any JAX computation: the backend reads it once.
jax.config.update("jax_num_cpu_devices", 8)
# Re-use compiled programs across test runs (and CI runs on the same machine).
_CACHE = pathlib.Path(
    os.environ.get("LTKD_JAX_CACHE", pathlib.Path.home() / ".cache" / "ltkd_jax_xla")
)
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
# The command-line tests' processes share it: many compile the same programs (the
# quick-start's steps, a killed run restarted), and a cache hit is the same executable.
os.environ["JAX_COMPILATION_CACHE_DIR"] = str(_CACHE)
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.1"
# grain's multiprocessing reads absl flags; pytest never calls app.run.
flags.FLAGS.mark_as_parsed()

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
# The scripts' own modules (scripts/reproduce_tables.py) import as `python scripts/x.py` sees them.
sys.path.insert(0, str(REPO_ROOT / "scripts"))


@functools.cache
def load_script(name: str):
    """scripts/<name>.py as a module, loaded once per test session: its absl flags can be
    defined only once in a process."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """(workdir, final state) of tests/tiny.py's CE run: two epochs of three steps on all 8
    simulated devices, uninterrupted. Shared: the trainer tests' reference and a teacher."""
    from tiny import tiny_config

    from ltkd_jax.training import trainer

    workdir = str(tmp_path_factory.mktemp("reference"))
    return workdir, trainer.train_and_evaluate(tiny_config(), workdir).state


@pytest.fixture
def kill_after_first_save(monkeypatch):
    """`checkpointing.save` finishes its first save, then raises KeyboardInterrupt: a kill
    right after a checkpoint. `.undo()` puts the real save back, to resume."""
    from ltkd_jax.training import checkpointing

    real_save = checkpointing.save

    def save_then_die(manager, step, *args, **kwargs):
        real_save(manager, step, *args, **kwargs)
        manager.wait_until_finished()
        raise KeyboardInterrupt("killed after the first checkpoint")

    monkeypatch.setattr(checkpointing, "save", save_then_die)
    return types.SimpleNamespace(undo=lambda: monkeypatch.setattr(checkpointing, "save", real_save))
