"""CE teacher on ImageNet-LT (docs/recipes.md#large-scale-recipe).

On a Cloud TPU VM pod slice (the same command on every worker; each host reads only its
slice of every batch):

    gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="\
      cd ltkd_jax && python -m ltkd_jax.main --config configs/ce_imagenet_lt.py \
      --workdir gs://$BUCKET/runs/ce_imagenet_lt --distributed \
      --config.data.root=/mnt/disks/imagenet --config.data.list_dir=/mnt/disks/imagenet_lt \
      --config.data.data_dir=/mnt/disks/tfds"

`data.root` is the ILSVRC-2012 root the OLTR lists (ImageNet_LT_{train,val,test}.txt in
`data.list_dir`) are relative to; the first run prepares ArrayRecord files into `data_dir`
(TF-free; prepare once per host disk first with `python -m ltkd_jax.data.prepare --config
configs/ce_imagenet_lt.py ...` and the same data flags). Without `data.root`, TFDS's own
prepared `imagenet_lt` in `data_dir` is read. Single host: drop `--distributed`.

Recipe (classifier-balancing stage 1): ResNeXt-50 32x4d (`:model=resnet50` for ResNet-50),
90 epochs, batch 512, SGD momentum 0.9, lr 0.2 cosine to 0, weight decay 5e-4, instance
sampling, random-resized crop 224 + flip, evaluation resize 256 + centre crop 224.
"""

from ltkd_jax import config_lib, recipes


def get_config(arg=None):
    args = config_lib.parse_arg(arg, model="resnext50_32x4d", epochs=90)
    c = recipes.large_scale_config("imagenet_lt", "ce", model=args.model, epochs=args.epochs)
    return config_lib.lock(c)
