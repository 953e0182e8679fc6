"""Run directories written before the method refactor still work: a student loads for
evaluation and as a teacher with its recorded outputs, a teacher run serves a new student,
and resuming with the equivalent config today is accepted.

The fixture (tests/fixtures/old_layout_cbd_run) is a CBD run written by the pre-refactor
code with tests/tiny.py's digits recipe: its config.json has the old shared `loss` section
(unset fields None) and `model.projection_dim`, its checkpoint the projection at
params['projection']; teacher/ is its stage-1 CE teacher.
"""

import pathlib

import numpy as np
import pytest
from tiny import tiny_config

from ltkd_jax import data
from ltkd_jax.runs import finished, rundir
from ltkd_jax.training import networks, sharding

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
OLD_RUN = FIXTURES / "old_layout_cbd_run"
EXPECTED = np.load(FIXTURES / "old_layout_cbd_run_expected.npz")
IMAGE_SHAPE = (8, 8, 1)


def equivalent_config(method="cbd", **overrides):
    """Today's config for the command that wrote the fixture."""
    return tiny_config(
        method=method,
        **{
            "model.head": "cosine",
            "teacher.head": "cosine",
            "teacher.model": "resnet8",
            "teacher.num_epochs": 1,
            "num_epochs": 1,
            "max_steps_per_epoch": 2,
            "keep_checkpoints": 1,
            "data.sampler": "class_balanced",
            **overrides,
        },
    )


def test_the_saved_config_reads_as_todays():
    run_config, _ = finished.read_run_info(str(OLD_RUN))
    assert run_config.method == "cbd"
    assert run_config.loss.to_dict() == {"alpha": 0.4, "beta": 100.0}
    assert "projection_dim" not in run_config.model


def test_an_old_student_loads_with_its_projection_and_gives_its_recorded_outputs():
    frozen = finished.load(str(OLD_RUN), mesh=sharding.make_mesh(1))
    assert set(frozen.variables["params"]) >= {"neck", "classifier"}
    logits, features = frozen.model.apply(frozen.variables, EXPECTED["inputs"], train=False)
    # float32 forward passes of the same weights: agreement to a few ulps of the activations.
    np.testing.assert_allclose(logits, EXPECTED["logits"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(features, EXPECTED["features"], rtol=1e-5, atol=1e-5)


def test_an_old_teacher_run_serves_a_new_student():
    config = equivalent_config("kd", **{"model.head": "linear"})
    task = data.load_task(config.data)
    teacher = finished.load_teacher(config, str(OLD_RUN / "teacher"), task, sharding.make_mesh(1))
    logits, _ = teacher.model.apply(teacher.variables, EXPECTED["inputs"], train=False)
    assert logits.shape == (4, 10) and np.isfinite(np.asarray(logits)).all()
    assert isinstance(teacher, networks.Teacher)


def test_resuming_with_the_equivalent_config_is_accepted():
    rundir.check_resume_config(str(OLD_RUN), equivalent_config())
    with pytest.raises(rundir.WorkdirError, match="config.loss.alpha: saved 0.4, now 0.5"):
        rundir.check_resume_config(str(OLD_RUN), equivalent_config(**{"loss.alpha": 0.5}))
