"""CBD (single teacher) on iNaturalist 2018 (ltkd_jax/methods/cbd.py; docs/recipes.md#cbd).

On a Cloud TPU VM pod slice:

    gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="\
      cd ltkd_jax && python -m ltkd_jax.main --config configs/cbd_inat18.py \
      --workdir gs://$BUCKET/runs/cbd_inat18 --distributed \
      --config.data.root=/mnt/disks/inat2018 --config.data.list_dir=/mnt/disks/inat2018_lists \
      --config.data.data_dir=/mnt/disks/tfds"

Without `teacher.workdir` the run first trains the stage-1 teacher (CE, instance sampling,
same backbone and cosine head) into WORKDIR/teacher. ResNet-50 v1, cosine classifier with
fixed sigma 20, student projection Dense(2048) + ReLU; stage 2 samples with CBD's
class-balancing example-stream resampler (`cbd_stream`); loss (1 - 0.4) CE + 0.4 * 100 *
(1 - cos) on features. 200 epochs, batch 128, lr 0.05 cosine per step without warm-up, heavy-
ball momentum 0.9; the official weight decay 2e-4 as its code applies it, an effective 1e-4
on all parameters (recipes.cbd_large_scale_config says why); random-resized crop area
[0.05, 1]. The last BN of each ResNet-50 block starts with gamma 0, as in the official code.
"""

from ltkd_jax import config_lib, recipes


def get_config(arg=None):
    args = config_lib.parse_arg(arg, epochs=200)
    c = recipes.cbd_large_scale_config(
        "inat2018", teachers=1, epochs=args.epochs, weight_decay=2e-4
    )
    return config_lib.lock(c)
