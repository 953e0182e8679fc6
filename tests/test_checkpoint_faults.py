"""Checkpoint faults reported as one message (issue 25): a full disk, an unreadable checkpoint,
orbax's background noise. Quick: no training; the same faults on real runs are in
tests/test_fault_injection.py."""

import errno
import json
import logging
import shutil
import sys
import threading
import types

import numpy as np
import pytest

from ltkd_jax import cli
from ltkd_jax.training import checkpointing

STATE = {"params": {"w": np.zeros((1000,), np.float32)}, "opt": np.zeros((250,), np.float32)}
STATE_BYTES = 5000  # 1250 float32


def _manager(root, save_error=None):
    """What `checkpointing.save` uses of an orbax manager: its directory and `save`."""

    def save(*args, **kwargs):
        raise save_error

    return types.SimpleNamespace(directory=root, save=save)


def _tensorstore_error() -> Exception:
    """The chain orbax raises for a truncated array file (reasons used to end in a
    truncated `<bound method pybind11_...` repr of the TensorStore spec)."""
    inner = ValueError(
        'OUT_OF_RANGE: Error reading "params.w/0" in OCDBT database at local file "/r/6/state/": '
        "Requested byte range [0, 4000) is not valid for value of size 10"
    )
    try:
        try:
            raise inner
        except ValueError as e:
            raise Exception(
                "Encountered error while reading array index: (slice(0, 3, 1),). See full "
                "TensorStore details: <bound method pybind11_detail_function_record_v1_system_l"
            ) from e
    except Exception as outer:  # noqa: BLE001 - the chain is the point
        return outer


def test_a_failed_read_gives_its_innermost_readable_reason():
    reason = checkpointing._reason(_tensorstore_error())
    assert reason.startswith('ValueError: OUT_OF_RANGE: Error reading "params.w/0"')
    assert "bound method" not in reason and "value of size 10" in reason
    try:  # json raises its JSONDecodeError `from None`: its StopIteration is no reason
        try:
            json.loads('{"tree_metadata": ')
        except ValueError as e:
            raise RuntimeError("Failed to read the metadata") from e
    except RuntimeError as e:
        assert checkpointing._reason(e).startswith("JSONDecodeError: Expecting value")


def test_out_of_disk_is_one_message_naming_path_bytes_and_what_is_kept(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    for name in ("3", "6", "9.orbax-checkpoint-tmp"):  # 9 was being written when space ran out
        (root / name).mkdir(parents=True)
    (root / "6" / "arrays").write_bytes(bytes(6000))  # the size a checkpoint takes, measured
    free = 114_688
    monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(free=free))
    full = OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(checkpointing.SaveError) as error:
        checkpointing.save(_manager(root, full), 12, STATE, None, None)
    message = str(error.value)
    assert f"saving checkpoint 9 in {root} failed (no space left on the device" in message
    assert f"a checkpoint needs about 6,000 bytes, {free:,} bytes are free" in message
    assert "The last good checkpoint, step 6, is kept" in message
    assert "rerun the same command to resume" in message


def test_a_save_error_without_a_good_checkpoint_says_nothing_is_kept(tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    denied = ValueError('PERMISSION_DENIED: Error writing "step/0" at local file "/r/3/"')
    with pytest.raises(checkpointing.SaveError) as error:
        checkpointing.save(_manager(root, denied), 3, STATE, None, None)
    assert "(ValueError: PERMISSION_DENIED: Error writing" in str(error.value)
    assert "nothing is kept, a rerun starts from step 0" in str(error.value)
    with pytest.raises(TypeError):  # a programming error keeps its traceback
        checkpointing.save(_manager(root, TypeError("bad argument")), 3, STATE, None, None)


def test_a_short_disk_is_warned_about_before_training(tmp_path, monkeypatch, caplog):
    def disk(free):
        monkeypatch.setattr(shutil, "disk_usage", lambda path: types.SimpleNamespace(free=free))

    disk(4 * STATE_BYTES - 1)  # keep 2: the latest two, the best, the one being written
    with caplog.at_level(logging.WARNING):
        checkpointing.warn_if_short_of_space(str(tmp_path), STATE, keep=2)
    assert f"only {4 * STATE_BYTES - 1:,} bytes are free" in caplog.text
    assert f"up to 4 checkpoints of about {STATE_BYTES:,} bytes" in caplog.text
    caplog.clear()
    disk(4 * STATE_BYTES)
    with caplog.at_level(logging.WARNING):
        checkpointing.warn_if_short_of_space(str(tmp_path), STATE, keep=2)
    assert caplog.text == ""
    # A resumed run: the checkpoints on disk take part of what it needs.
    (tmp_path / "checkpoints" / "3").mkdir(parents=True)
    (tmp_path / "checkpoints" / "3" / "arrays").write_bytes(bytes(STATE_BYTES))
    disk(3 * STATE_BYTES)
    with caplog.at_level(logging.WARNING):
        checkpointing.warn_if_short_of_space(str(tmp_path), STATE, keep=2)
    assert caplog.text == ""


def test_an_unreadable_teacher_checkpoint_is_a_checkpoint_error(tmp_path):
    (tmp_path / "checkpoints" / "6" / "state").mkdir(parents=True)  # its files lost
    with pytest.raises(checkpointing.CheckpointError) as error:
        checkpointing.saved_param_names(str(tmp_path))
    assert f"checkpoint 6 of the finished run in {tmp_path} cannot be read" in str(error.value)


def test_orbax_background_noise_is_dropped_and_other_problems_are_kept(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "__unraisablehook__", seen.append)
    for text in ("Event loop is closed", "sys.meta_path is None, Python is likely shutting down"):
        cli._quiet_unraisable(types.SimpleNamespace(exc_value=RuntimeError(text)))
    assert seen == []
    other = types.SimpleNamespace(exc_value=RuntimeError("something else"))
    cli._quiet_unraisable(other)
    assert seen == [other]
    monkeypatch.setattr(threading, "__excepthook__", seen.append)
    cli._quiet_thread_errors(types.SimpleNamespace(exc_value=ImportError("sys.meta_path is None")))
    cli._quiet_thread_errors(other)
    assert seen == [other, other]
    quiet = cli._QuietLibraries()
    record = logging.LogRecord("absl", logging.ERROR, "/x/orbax/future.py", 1, "failed", (), None)
    assert quiet.filter(record)  # an orbax error without a traceback is kept
    record.exc_info = (ValueError, ValueError("RESOURCE_EXHAUSTED"), None)
    assert not quiet.filter(record)  # its background traceback: raised again, reported once
