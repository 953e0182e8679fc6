"""Device-resident epochs: the same batches as the grain path, the same training, exact resume."""

import contextlib

import jax
import numpy as np
import pytest
from test_train import params_of
from tiny import tiny_config

from ltkd_jax import errors
from ltkd_jax.data import device, load_digits, make_train_iterator, pipeline
from ltkd_jax.training import feeds, progress, sharding, trainer
from ltkd_jax.training.writers import read_jsonl

BATCH = 32


@pytest.fixture(scope="module")
def split():
    return load_digits()[0]


@pytest.mark.parametrize("sampler", ["instance", "class_balanced"])
@pytest.mark.parametrize("augment", ["cifar", "none"])
def test_device_batches_equal_the_grain_batches(split, sampler, augment):
    iterator, steps_per_epoch = make_train_iterator(
        split, global_batch_size=BATCH, sampler=sampler, seed=3, num_epochs=2, augment=augment
    )
    grain_batches = [next(iterator) for _ in range(2 * steps_per_epoch)]
    sequence = pipeline.index_sequence(split, BATCH, sampler, seed=3, num_epochs=2)
    data = device.upload(split.images, split.labels, sharding.make_mesh(1))
    make_batch = jax.jit(device.make_batch)
    # The first steps of both epochs, augmentation included.
    for t in (0, 1, steps_per_epoch, steps_per_epoch + 1):
        plan = device.plan_batches(sequence, t, t + 1, batch_size=BATCH, seed=3, augment=augment)
        on_device = make_batch(data, jax.tree.map(lambda x: x[0], vars(plan)))
        np.testing.assert_array_equal(on_device["image"], grain_batches[t]["image"])
        np.testing.assert_array_equal(on_device["label"], grain_batches[t]["label"])
    assert augment == "none" or not np.array_equal(
        grain_batches[0]["image"], split.images[sequence.epoch_indices(0)[:BATCH]]
    )


def test_step_position_round_trip():
    position = device.StepPosition(17)
    restored = device.StepPosition()
    restored.set_state(position.get_state())
    assert restored.next_batch == 17
    restored.set_state(b'{"next_index": 5}')  # grain's own state, from a host-path checkpoint
    assert restored.next_batch == -1


def _train_records(workdir):
    return [r for r in read_jsonl(f"{workdir}/metrics.jsonl") if r["split"] == "train"]


CIFAR = {"data.augment": "cifar"}


@contextlib.contextmanager
def scanned_on_cpu():
    """The accelerators' form (one lax.scan per chunk), forced on the CPU; the CPU's own
    form (one jitted call per step) is checked against it below."""
    feeds.SCAN_ON_CPU = True
    try:
        yield
    finally:
        feeds.SCAN_ON_CPU = False


@pytest.fixture(scope="module")
def device_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("device"))
    with scanned_on_cpu():
        return workdir, trainer.train_and_evaluate(
            tiny_config(num_devices=2, **CIFAR), workdir
        ).state


@pytest.mark.slow
def test_device_path_trains_like_the_host_path(device_run, tmp_path):
    workdir, state = device_run
    config = tiny_config(num_devices=2, **{"data.augment": "cifar", "data.device_resident": False})
    host = trainer.train_and_evaluate(config, str(tmp_path)).state
    # The same batches and the same step; only XLA's fusion of a scan body differs.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        params_of(state),
        params_of(host),
    )
    device_records, host_records = _train_records(workdir), _train_records(str(tmp_path))
    assert [r["step"] for r in device_records] == [r["step"] for r in host_records]
    np.testing.assert_allclose(
        [r["loss"] for r in device_records], [r["loss"] for r in host_records], rtol=1e-4
    )


@pytest.mark.slow
@pytest.mark.parametrize("scan_steps, scanned", [(2, True), (0, False)])
def test_chunks_and_stepwise_calls_match_whole_epoch_scans(
    device_run, tmp_path, scan_steps, scanned
):
    _, state = device_run
    config = tiny_config(num_devices=2, scan_steps=scan_steps, **CIFAR)
    with scanned_on_cpu() if scanned else contextlib.nullcontext():
        other = trainer.train_and_evaluate(config, str(tmp_path)).state
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        params_of(state),
        params_of(other),
    )


def test_the_cpu_calls_one_jitted_step_at_a_time():
    assert jax.default_backend() == "cpu" and not feeds.scans_steps()
    with scanned_on_cpu():
        assert feeds.scans_steps()


@pytest.mark.slow  # two training runs
def test_killed_device_run_resumes_bit_exact(device_run, tmp_path, kill_after_first_save):
    _, reference = device_run
    config = tiny_config(num_devices=2, **CIFAR)
    with scanned_on_cpu(), pytest.raises(KeyboardInterrupt):
        trainer.train_and_evaluate(config, str(tmp_path))
    kill_after_first_save.undo()
    with scanned_on_cpu():
        resumed = trainer.train_and_evaluate(config, str(tmp_path)).state
    assert int(resumed.step) == int(reference.step)
    jax.tree.map(np.testing.assert_array_equal, params_of(resumed), params_of(reference))


def test_non_finite_guard_names_the_first_bad_step_of_a_chunk():
    chunk = {"loss": np.array([1.0, 2.0, np.nan, np.inf]), "lr": np.array([0.1, np.inf, 0.1, 0.1])}
    assert progress.first_non_finite(10, chunk) == (12, {"lr": np.inf})
    assert progress.first_non_finite(10, {"loss": np.ones(3)}) is None
    with pytest.raises(FloatingPointError, match="at step 12: "):
        progress.check_finite(10, chunk, "/tmp/run")
    # One message (a UserError: exit 2, no traceback) that says what is kept and the way on.
    with pytest.raises(errors.UserError) as error:
        progress.check_finite(10, chunk, "/tmp/run", kept=9)
    assert "The checkpoint of step 9 in /tmp/run/checkpoints is kept" in str(error.value)
    assert "--config.resume_overrides=optim.lr" in str(error.value)
    with pytest.raises(errors.UserError, match="No checkpoint was saved before it: nothing is"):
        progress.check_finite(10, chunk, "/tmp/run", kept=None)
