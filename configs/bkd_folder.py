"""BKD student on a user's own images (teacher first, then the student; methods.md 5).

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

from ltkd_jax import config_lib


def get_config(arg=None):
    args = config_lib.parse_arg(
        arg, root="", imb=1.0, model="resnet10", augment="imagenet", size=0, epochs=100
    )
    c = config_lib.base_config()
    c.method = "bkd"
    c.loss.class_weighting = "reweight"
    c.data.name = "folder"
    c.data.root = args.root
    c.data.imbalance_factor = args.imb
    c.data.image_size = args.size
    c.data.augment = args.augment
    c.model.name = args.model
    c.teacher.model = args.model
    c.teacher.head = "linear"
    c.teacher.num_epochs = args.epochs
    c.num_epochs = args.epochs
    c.batch_size = 128
    c.eval_batch_size = 200
    c.optim.lr = 0.1
    c.optim.schedule = "cosine"
    c.optim.warmup_epochs = 5
    c.optim.weight_decay = 5e-4
    return config_lib.lock(c)
