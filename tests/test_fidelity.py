"""Where the recipes follow the official code (or a documented account of a paper), checks
that would fail on the deviations found in review: teacher seeds. The method-specific checks
(the BKD repository's KD row, LTKD's groups, CBD's weight decay and initialisers) live in
tests/methods/test_<method>.py."""

import pytest
from test_configs import CONFIG_DIR, _load

from ltkd_jax import methods
from ltkd_jax.config import defaults
from ltkd_jax.runs import teachers as teacher_stage


@pytest.mark.parametrize("name, arg", [("bkd_cifar", None), ("cbd_large_scale", "teachers=4")])
def test_teacher_seeds_differ_from_the_student_and_each_other(name, arg):
    _, config = _load(CONFIG_DIR / f"{name}.py", arg)
    seeds = [
        teacher_stage.teacher_config(config, k).seed for k in range(methods.num_teachers(config))
    ]
    assert config.seed not in seeds
    assert len(set(seeds)) == len(seeds)
    # Across a table over seeds 0..999, no teacher reuses any student's seed.
    assert min(defaults.teacher_seed(s, 0) for s in range(1000)) >= 1000
