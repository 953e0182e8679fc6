"""CBD_ENS (four teachers) on ImageNet-LT (ltkd_jax/methods/cbd.py; docs/recipes.md#cbd).

On a Cloud TPU VM pod slice:

    gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="\
      cd ltkd_jax && python -m ltkd_jax.main --config configs/cbd_ens_imagenet_lt.py \
      --workdir gs://$BUCKET/runs/cbd_ens_imagenet_lt --distributed \
      --config.data.root=/mnt/disks/imagenet --config.data.list_dir=/mnt/disks/imagenet_lt \
      --config.data.data_dir=/mnt/disks/tfds"

Without `teacher.workdir` the run first trains four stage-1 teachers (CE, seeds
seed + 1000 .. seed + 4000, same backbone and cosine head) into WORKDIR/teacher_<k>; as the
official vanilla_seed1/2 + data_aug_seed1/2, teachers 2 and 3
(`teacher.color_jitter_teachers=2`) add SimCLR v2 colour jitter (strength 1, p = 0.8) +
random grayscale (p = 0.2). Pass finished runs as a comma-separated --config.teacher.workdir
(vanilla ones first, then the data-aug ones). ResNet-50 v1 (last BN of each block
zero-initialised), cosine classifier with fixed sigma 20, student projection Dense(4 x 2048)
+ ReLU; stage 2 samples with CBD's class-balancing example-stream resampler (`cbd_stream`),
without colour jitter; loss (1 - 0.4) CE + 0.4 * 100 * (1 - cos) on features. 90 epochs,
batch 128, lr 0.05 cosine per step without warm-up, heavy-ball momentum 0.9; the official
weight decay 5e-4 is applied as its code applies it, an effective 2.5e-4 on all parameters
(recipes.cbd_large_scale_config says why); random-resized crop area [0.05, 1].
"""

from ltkd_jax import config_lib, recipes


def get_config(arg=None):
    args = config_lib.parse_arg(arg, epochs=90)
    c = recipes.cbd_large_scale_config(
        "imagenet_lt", teachers=4, epochs=args.epochs, weight_decay=5e-4
    )
    return config_lib.lock(c)
