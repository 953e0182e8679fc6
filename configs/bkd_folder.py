"""BKD student on a user's own images (teacher first, then the student; ltkd_jax/methods/bkd.py).

    python -m ltkd_jax.main --config configs/bkd_folder.py --workdir runs/bkd_mydata \
        --config.data.root=/path/to/mydata

With no `--config.teacher.workdir` the run first trains a CE teacher with the recipe of
configs/ce_folder.py into WORKDIR/teacher, then distils the student with BKD (effective-number
class weights); pass `--config.teacher.workdir=runs/ce_mydata` to reuse a finished teacher.
The data layout, preparation and options are those of configs/ce_folder.py (same config
arguments: `:root=...,imb=...,model=...,augment=...,size=...,epochs=...`).

Multi-host (TPU VM pod slice):

    gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="\
      cd ltkd_jax && python -m ltkd_jax.main --config configs/bkd_folder.py \
      --workdir gs://$BUCKET/runs/bkd_mydata --distributed --config.data.root=/mnt/disks/mydata"
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.folder_config(arg, "bkd"))
