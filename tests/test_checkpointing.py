"""Checkpoint retention and restore (ltkd_jax/training/checkpointing.py) on a tiny state:
the latest N and the best by test top-1 are kept, and a resume restores the newest state
and data position."""

import jax.numpy as jnp
import numpy as np

from ltkd_jax.data.device import StepPosition
from ltkd_jax.training import checkpointing

# Test top-1 after each step: step 1 is the best, step 3 the latest.
TOP1 = {1: 0.9, 2: 0.3, 3: 0.2}


def state_at(step: int) -> dict:
    return {"w": jnp.full((3,), float(step)), "step": jnp.asarray(step)}


def test_the_latest_and_the_best_are_kept_and_the_newest_restored(tmp_path):
    manager = checkpointing.make_manager(str(tmp_path), keep=1)
    for step, top1 in TOP1.items():
        checkpointing.save(manager, step, state_at(step), StepPosition(step), {"top1": top1})
        manager.wait_until_finished()
    assert sorted(manager.all_steps()) == [1, 3]
    position = StepPosition()
    restored = checkpointing.restore_latest(manager, state_at(0), position)
    np.testing.assert_array_equal(restored["w"], [3.0, 3.0, 3.0])
    assert int(restored["step"]) == 3 and position.next_batch == 3
    manager.close()
