"""Any method on a user's own images, with the folder recipe of configs/ce_folder.py:

    python -m ltkd_jax.main --config configs/folder.py:method=dkd,root=/path/to/mydata \
        --workdir runs/dkd_mydata --config.teacher.workdir=runs/ce_mydata

`method` (default ce) is any method of ltkd_jax/methods/; it brings its own part of the
recipe (loss, sampler, head: recipes.with_method; its epoch-counted loss fields, DRW start
and DKD warm-up, scaled to this schedule), the folder recipe the data, models and schedule.
The other arguments are ce_folder.py's: `root, imb, model, augment, size, epochs`. Without
--config.teacher.workdir a distillation method first trains its CE teacher into
WORKDIR/teacher. docs/own_data.md walks through it.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    items = [i for i in (arg or "").split(",") if i]
    method = next((i.partition("=")[2] for i in items if i.startswith("method=")), "ce")
    rest = ",".join(i for i in items if not i.startswith("method=")) or None
    recipe = recipes.folder_config(rest, "ce")
    if method == "ce":
        return defaults.lock(recipe)
    return defaults.lock(recipes.with_method(recipe, method, "folder"))
