"""CE teacher on a user's own images: a `<split>/<class>/<image>` folder or zip.

    python -m ltkd_jax.main --config configs/ce_folder.py --workdir runs/ce_mydata \
        --config.data.root=/path/to/mydata

or `--config configs/ce_folder.py:root=/path/to/mydata`. The tree needs `train/` and `test/`
(without `test/`, `val/` or `validation/` is the test split; --config.data.eval_split picks
another), each with one folder per class; a `val/` beside `test/` chooses the best epoch:

    mydata/train/cat/001.jpg  mydata/train/dog/002.png  ...  mydata/test/cat/101.jpg

The first run checks every image and prepares ArrayRecord files in `data.data_dir` (default
~/tensorflow_datasets), keyed on a fingerprint of the files (paths, sizes, mtimes): a
changed folder is prepared again, with a log line saying what changed. Corrupt images are
listed with their paths and stop preparation (nothing is written) unless
--config.data.on_corrupt=skip. The train split is used as it is (`imb=1`); `:imb=100` cuts
an exponentially long-tailed subset out of a *balanced* folder
(docs/data.md#long-tailed-cifar-subsets) and is
refused on one that is already imbalanced. A `val/` split (or `data.val_fraction`) chooses
the best checkpoint; shot groups use thresholds derived from the class counts when the
CIFAR ones (100 / 20) leave a group empty. Images are fed at `size` (0 = the typical
shorter side, rounded down to a multiple of 32, at most 224; logged), decoded into RAM when
that takes <= 2 GiB (`data.in_memory`), otherwise per example in `data.num_workers` grain
workers. Small images (<= 64 px): `:model=resnet32,augment=cifar`. docs/own_data.md has
the whole walk-through; configs/folder.py runs any other method.

Multi-host (TPU VM pod slice; same command on every worker, data on every host's disk):

    gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command="\
      cd ltkd_jax && python -m ltkd_jax.main --config configs/ce_folder.py \
      --workdir gs://$BUCKET/runs/ce_mydata --distributed --config.data.root=/mnt/disks/mydata"

Recipe: ResNet-10, 100 epochs, batch 128, SGD momentum 0.9, lr 0.1 with 5 warm-up epochs and
cosine decay, weight decay 5e-4, instance sampling, random-resized crop + flip.
"""

from ltkd_jax.config import defaults, recipes


def get_config(arg=None):
    return defaults.lock(recipes.folder_config(arg, "ce"))
