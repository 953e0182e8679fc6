"""Prepare a config's dataset (ArrayRecord) and print its class counts, without training.

    python -m ltkd_jax.data.prepare --config configs/ce_imagenet_lt.py \
        --config.data.root=/mnt/disks/imagenet --config.data.list_dir=/mnt/disks/imagenet_lt \
        --config.data.data_dir=/mnt/disks/tfds

Run it once (per host disk, or once for a shared file system) before a multi-host job, so the
hosts do not prepare the same files at the same time. Checks every image (corrupt files:
`data.on_corrupt`) and caches the labels, so the training job starts reading at once.
"""

from __future__ import annotations

import numpy as np
from absl import app, flags
from ml_collections import config_flags

from ltkd_jax.data import longtail, sources

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config under configs/.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    del argv
    d = _CONFIG.value.data
    train, test = sources.load_splits(
        d.name,
        data_dir=d.data_dir or None,
        archive=d.archive or None,
        **sources.split_options(d),
    )
    counts = train.class_counts()
    groups = np.bincount(longtail.shot_groups(counts, d.many_threshold, d.few_threshold), None, 3)
    print(
        f"{d.name}: train {len(train)} ({type(train).__name__}), test {len(test)}, "
        f"{train.num_classes} classes, images {train.image_shape}, per-class train "
        f"{counts.max()} .. {counts.min()}, many/medium/few {groups.tolist()}"
    )


if __name__ == "__main__":
    app.run(main)
