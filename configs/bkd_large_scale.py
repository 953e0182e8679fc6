"""BKD student on ImageNet-LT or iNaturalist 2018 (ltkd_jax/methods/bkd.py on
docs/recipes.md#large-scale-recipe: our choice, the BKD paper ran CIFAR only).

On a Cloud TPU VM pod slice:

    gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="\
      cd ltkd_jax && python -m ltkd_jax.main --config configs/bkd_large_scale.py \
      --workdir gs://$BUCKET/runs/bkd_imagenet_lt --distributed \
      --config.teacher.workdir=gs://$BUCKET/runs/ce_imagenet_lt \
      --config.data.root=/mnt/disks/imagenet --config.data.list_dir=/mnt/disks/imagenet_lt \
      --config.data.data_dir=/mnt/disks/tfds"

    # iNaturalist 2018
    ... --config configs/bkd_large_scale.py:dataset=inat2018 --workdir gs://$BUCKET/runs/bkd_inat \
      --config.teacher.workdir=gs://$BUCKET/runs/ce_inat18 \
      --config.data.root=/mnt/disks/inat2018 --config.data.list_dir=/mnt/disks/inat2018_lists

Without `teacher.workdir` the run first trains its CE teacher into WORKDIR/teacher. Teacher
and student share the recipe of configs/ce_large_scale.py; only the loss differs: BKD with
effective-number class weights from epoch 0.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.benchmark_config(arg, "bkd"))
