"""CE teacher on iNaturalist 2018 (docs/recipes.md#large-scale-recipe).

On a Cloud TPU VM pod slice (the same command on every worker; each host reads only its
slice of every batch):

    gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="\
      cd ltkd_jax && python -m ltkd_jax.main --config configs/ce_inat18.py \
      --workdir gs://$BUCKET/runs/ce_inat18 --distributed \
      --config.data.root=/mnt/disks/inat2018 --config.data.list_dir=/mnt/disks/inat2018_lists \
      --config.data.data_dir=/mnt/disks/tfds"

`data.root` is the iNaturalist 2018 root the classifier-balancing lists
(iNaturalist18_{train,val}.txt in `data.list_dir`, lines `train_val2018/... label`) are
relative to; the validation split is the test set (docs/data.md#large-scale-benchmarks). The first
run
prepares ArrayRecord files into `data_dir` (TF-free; prepare once per host disk first
with `python -m ltkd_jax.data.prepare --config configs/ce_inat18.py ...` and the same
data flags). Without `data.root`, TFDS's own prepared `i_naturalist2018` in `data_dir`
is read. Single host: drop `--distributed`.

Recipe (classifier-balancing stage 1): ResNet-50, 90 epochs (`:epochs=200` for the long
schedule), batch 512, SGD momentum 0.9, lr 0.2 cosine to 0, weight decay 5e-4, instance
sampling, random-resized crop 224 + flip, evaluation resize 256 + centre crop 224.
"""

from ltkd_jax import config_lib, recipes


def get_config(arg=None):
    args = config_lib.parse_arg(arg, model="resnet50", epochs=90)
    c = recipes.large_scale_config("inat2018", "ce", model=args.model, epochs=args.epochs)
    return config_lib.lock(c)
