"""BKD student on ImageNet-LT (ltkd_jax/methods/bkd.py on docs/recipes.md#large-scale-recipe: our
choice, the BKD paper ran CIFAR only).

On a Cloud TPU VM pod slice:

    gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="\
      cd ltkd_jax && python -m ltkd_jax.main --config configs/bkd_imagenet_lt.py \
      --workdir gs://$BUCKET/runs/bkd_imagenet_lt --distributed \
      --config.teacher.workdir=gs://$BUCKET/runs/ce_imagenet_lt \
      --config.data.root=/mnt/disks/imagenet --config.data.list_dir=/mnt/disks/imagenet_lt \
      --config.data.data_dir=/mnt/disks/tfds"

Without `teacher.workdir` the run first trains its CE teacher into WORKDIR/teacher. Teacher
and student share the recipe of configs/ce_imagenet_lt.py (ResNeXt-50 32x4d, 90 epochs, batch
512, lr 0.2 cosine, wd 5e-4); only the loss differs: BKD with effective-number class weights.
"""

from ltkd_jax import config_lib, recipes


def get_config(arg=None):
    args = config_lib.parse_arg(arg, model="resnext50_32x4d", epochs=90)
    c = recipes.large_scale_config("imagenet_lt", "bkd", model=args.model, epochs=args.epochs)
    c.loss.class_weighting = "reweight"
    return config_lib.lock(c)
