"""Prepare a config's dataset (ArrayRecord) and print its class counts, without training.

    python -m ltkd_jax.data.prepare --config configs/ce_large_scale.py \
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

from ltkd_jax.data import sources, task

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config under configs/.")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    del argv
    d = _CONFIG.value.data
    splits = sources.load_dataset(
        d.name,
        data_dir=d.data_dir or None,
        archive=d.archive or None,
        **sources.split_options(d),
    )
    t = task.task_splits(splits, d)  # the trainer's checks: long-tail cut, empty classes, groups
    counts, groups = t.class_counts, np.bincount(t.class_groups, minlength=3)
    thresholds = t.info["shot_thresholds"]
    print(
        f"{d.name}: train {len(t.train)} ({type(t.train).__name__}), test {len(t.test)}, "
        f"val {t.info['num_val']}, {t.train.num_classes} classes, images "
        f"{t.train.image_shape}, per-class train {counts.max()} .. {counts.min()}, "
        f"many/medium/few {groups.tolist()} (many > {thresholds['many']}, few < "
        f"{thresholds['few']}), best chosen on {t.info['selected_on']}"
    )


if __name__ == "__main__":
    app.run(main)
