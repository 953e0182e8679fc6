"""CBD on ImageNet-LT or iNaturalist 2018, one teacher or the CBD_ENS ensemble
(ltkd_jax/methods/cbd.py; docs/recipes.md#cbd).

On a Cloud TPU VM pod slice:

    gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="\
      cd ltkd_jax && python -m ltkd_jax.main --config configs/cbd_large_scale.py \
      --workdir gs://$BUCKET/runs/cbd_imagenet_lt --distributed \
      --config.data.root=/mnt/disks/imagenet --config.data.list_dir=/mnt/disks/imagenet_lt \
      --config.data.data_dir=/mnt/disks/tfds"

    # CBD_ENS (four teachers) on ImageNet-LT; single-teacher CBD on iNaturalist 2018
    ... --config configs/cbd_large_scale.py:teachers=4 --workdir gs://$BUCKET/runs/cbd_ens ...
    ... --config configs/cbd_large_scale.py:dataset=inat2018 --workdir gs://$BUCKET/runs/cbd_inat \
      --config.data.root=/mnt/disks/inat2018 --config.data.list_dir=/mnt/disks/inat2018_lists

Without `teacher.workdir` the run first trains its stage-1 teachers (CE, instance sampling,
same backbone and cosine head; seeds seed + 1000, seed + 2000, ...) into WORKDIR/teacher or
WORKDIR/teacher_<k>. As the official vanilla_seed1/2 + data_aug_seed1/2, the last half of an
ensemble adds SimCLR v2 colour jitter + random grayscale; pass finished runs as a
comma-separated --config.teacher.workdir (vanilla ones first). ResNet-50 v1 (last BN of each
block zero-initialised), cosine classifier with fixed sigma 20, student projection
Dense(K x 2048) + ReLU; stage 2 samples with CBD's class-balancing example-stream resampler
(`cbd_stream`); loss (1 - 0.4) CE + 0.4 * 100 * (1 - cos) on features. 90 epochs on
ImageNet-LT, 200 on iNaturalist, batch 128, lr 0.05 cosine per step without warm-up,
heavy-ball momentum 0.9; the official weight decay (5e-4 ImageNet-LT, 2e-4 iNaturalist)
applied as its code applies it, an effective half of it on all parameters
(recipes.cbd_large_scale_config says why); random-resized crop area [0.05, 1].
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.benchmark_config(arg, "cbd"))
