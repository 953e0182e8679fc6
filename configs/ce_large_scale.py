"""CE teacher on ImageNet-LT or iNaturalist 2018 (docs/recipes.md#large-scale-recipe).

On a Cloud TPU VM pod slice (the same command on every worker; each host reads only its
slice of every batch):

    gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="\
      cd ltkd_jax && python -m ltkd_jax.main --config configs/ce_large_scale.py \
      --workdir gs://$BUCKET/runs/ce_imagenet_lt --distributed \
      --config.data.root=/mnt/disks/imagenet --config.data.list_dir=/mnt/disks/imagenet_lt \
      --config.data.data_dir=/mnt/disks/tfds"

    # iNaturalist 2018 (its validation split is the test set)
    ... --config configs/ce_large_scale.py:dataset=inat2018 --workdir gs://$BUCKET/runs/ce_inat18 \
      --config.data.root=/mnt/disks/inat2018 --config.data.list_dir=/mnt/disks/inat2018_lists

`data.root` is the image root the benchmark's list files (OLTR's ImageNet_LT_*.txt,
classifier-balancing's iNaturalist18_*.txt, in `data.list_dir`) are relative to
(docs/data.md#large-scale-benchmarks). The first run prepares ArrayRecord files into
`data_dir` (TF-free; prepare once per host disk first with `python -m ltkd_jax.data.prepare
--config configs/ce_large_scale.py ...` and the same data flags). Without `data.root`,
TFDS's own prepared `imagenet_lt` / `i_naturalist2018` in `data_dir` is read. Single host:
drop `--distributed`.

Recipe (classifier-balancing stage 1): ResNeXt-50 32x4d on ImageNet-LT, ResNet-50 on
iNaturalist (`:model=`), 90 epochs (`:epochs=200` for the long schedule), batch 512, SGD
momentum 0.9, lr 0.2 cosine to 0, weight decay 5e-4, instance sampling, random-resized crop
224 + flip, evaluation resize 256 + centre crop 224.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.benchmark_config(arg, "ce"))
