"""Checkpoint retention and restore (ltkd_jax/training/checkpointing.py) on a tiny state:
the latest N and the best by test top-1 are kept, and a resume restores the newest state
and data position."""

import jax.numpy as jnp
import numpy as np

from ltkd_jax.data.device import StepPosition
from ltkd_jax.training import checkpointing

# Test top-1 after each step: step 2 is the best, steps 3 and 4 the latest two.
TOP1 = {1: 0.5, 2: 0.9, 3: 0.3, 4: 0.2}


def state_at(step: int) -> dict:
    return {"w": jnp.full((3,), float(step)), "step": jnp.asarray(step)}


def test_the_latest_two_and_the_best_are_kept_and_the_newest_restored(tmp_path):
    manager = checkpointing.make_manager(str(tmp_path), keep=2)
    for step, top1 in TOP1.items():
        checkpointing.save(manager, step, state_at(step), StepPosition(step), {"top1": top1})
        manager.wait_until_finished()
    assert sorted(manager.all_steps()) == [2, 3, 4]
    position = StepPosition()
    restored = checkpointing.restore_latest(manager, state_at(0), position)
    np.testing.assert_array_equal(restored["w"], [4.0, 4.0, 4.0])
    assert int(restored["step"]) == 4 and position.next_batch == 4
    manager.close()
