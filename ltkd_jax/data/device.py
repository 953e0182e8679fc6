"""Device-resident epochs: in-RAM splits uploaded once, batches built on the accelerator.

The host keeps only what is cheap and must stay exactly reproducible: for every global
batch t, the dataset indices (`ReweightedIndexSequence`, the same object the grain path
reads) and the augmentation draws (`pipeline.draw_batch_augment`, the same numpy generator
the grain path uses). These small integer arrays go to the devices once per chunk of steps;
the gather, the pad-crop-flip and the train step then run inside one jitted `lax.scan`
(`steps.train_chunk`). So the device path and the grain path feed the step the same
batches, bit for bit (tests/test_device_epochs.py).

Multi-host: every process computes the same global plan (it is a pure function of the
seed and t) and contributes the shards of its own devices; the uploaded images are
replicated on every device (CIFAR-LT is 33 MB).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from ltkd_jax.data import pipeline
from ltkd_jax.data.arrays import ArraySplit
from ltkd_jax.data.sampling import ReweightedIndexSequence
from ltkd_jax.data.sources import Split

CROP_PAD = 4  # torchvision RandomCrop(32, padding=4), as the grain path


def supports(split: Split, augment: str, color_jitter: bool) -> bool:
    """Whether a split can train on the device path: in RAM, and augmentation it implements
    (pad-crop-flip or none). Colour jitter stays on the host (grain) path."""
    return isinstance(split, ArraySplit) and augment in ("cifar", "none") and not color_jitter


def _global_array(x: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from a host array that every process holds in full."""
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def upload(images: np.ndarray, labels: np.ndarray, mesh: jax.sharding.Mesh) -> dict:
    """uint8 images and int32 labels, replicated on every device of the mesh."""
    replicated = NamedSharding(mesh, P())
    return {
        "image": _global_array(np.ascontiguousarray(images), replicated),
        "label": _global_array(np.asarray(labels, np.int32), replicated),
    }


def batch_indices(sequence: ReweightedIndexSequence, t: int, batch_size: int) -> np.ndarray:
    """Dataset indices of global batch t: positions [t B, (t + 1) B) of the sequence, as the
    grain path's `MapDataset.source(sequence).batch(B)` reads them."""
    epoch, first = divmod(t * batch_size, sequence.epoch_len)
    return sequence.epoch_indices(epoch)[first : first + batch_size]


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """What the host draws for global batches [t0, t1): numpy arrays of shape [K, B]."""

    index: np.ndarray  # int32 dataset indices
    rows: np.ndarray  # int32 crop offsets (0 .. 2 * pad)
    cols: np.ndarray  # int32
    flip: np.ndarray  # bool

    def to_device(self, mesh: jax.sharding.Mesh) -> dict:
        """[K, (D,) B] global arrays, the batch (last) axis sharded over the mesh."""
        leading = (None,) * (self.index.ndim - 1)
        sharding = NamedSharding(mesh, P(*leading, "data"))
        return {k: _global_array(v, sharding) for k, v in dataclasses.asdict(self).items()}


def stack_plans(plans: list[EpochPlan]) -> EpochPlan:
    """One plan as it is; several (one per seed) stacked into [K, D, B] arrays."""
    if len(plans) == 1:
        return plans[0]
    return EpochPlan(
        *(
            np.stack([getattr(p, f.name) for p in plans], axis=1)
            for f in dataclasses.fields(EpochPlan)
        )
    )


def plan_batches(
    sequence: ReweightedIndexSequence,
    t0: int,
    t1: int,
    *,
    batch_size: int,
    seed: int,
    augment: str,
) -> EpochPlan:
    """The indices and augmentation draws of global batches t0 .. t1 - 1."""
    index = np.stack([batch_indices(sequence, t, batch_size) for t in range(t0, t1)])
    shape = index.shape
    if augment == "cifar":
        draws = [pipeline.draw_batch_augment(seed, t, batch_size, CROP_PAD) for t in range(t0, t1)]
        rows, cols, flip = (np.stack([d.crop[i] for d in draws]) for i in range(3))
    else:  # "none": the identity crop
        rows = cols = np.full(shape, CROP_PAD)
        flip = np.zeros(shape, bool)
    return EpochPlan(
        index.astype(np.int32), rows.astype(np.int32), cols.astype(np.int32), flip.astype(bool)
    )


def make_batch(data: dict, step_plan: dict) -> dict:
    """One global batch on the device: gather by index, zero-pad 4, crop, flip; a [D, B] plan
    (one per seed) gives [D, B, ...] batches.

    Integer indexing only, so it equals `augment.crop_flip` on the host bit for bit.
    """
    if step_plan["index"].ndim == 2:
        return jax.vmap(make_batch, in_axes=(None, 0))(data, step_plan)
    images = data["image"][step_plan["index"]]  # [B, H, W, C]
    _, h, w, _ = images.shape
    padded = jnp.pad(images, ((0, 0), (CROP_PAD, CROP_PAD), (CROP_PAD, CROP_PAD), (0, 0)))
    y = step_plan["rows"][:, None] + jnp.arange(h)  # [B, H]
    x_order = jnp.where(step_plan["flip"][:, None], jnp.arange(w)[::-1], jnp.arange(w))
    x = step_plan["cols"][:, None] + x_order  # [B, W]
    b = jnp.arange(images.shape[0])
    image = padded[b[:, None, None], y[:, :, None], x[:, None, :]]
    return {"image": image, "label": data["label"][step_plan["index"]]}


def eval_layout(split: ArraySplit, batch_size: int, mesh: jax.sharding.Mesh) -> dict:
    """The whole test split as [num_batches, B, ...] device arrays with a padding mask, in
    the order of `pipeline.eval_batches` (padding repeats example 0, masked out)."""
    n = len(split)
    num_batches = -(-n // batch_size)
    index = np.arange(num_batches * batch_size)
    mask = index < n
    index = np.where(mask, index, 0).reshape(num_batches, batch_size)
    sharding = NamedSharding(mesh, P(None, "data"))
    return {
        "image": _global_array(split.images[index], sharding),
        "label": _global_array(split.labels[index].astype(np.int32), sharding),
        "mask": _global_array(mask.reshape(num_batches, batch_size), sharding),
    }


class StepPosition:
    """The data position of a device-resident run, stored as the checkpoint's `data` item.

    The batches are a pure function of (seed, t), so the position is the next global batch
    index, which always equals the restored state's step. It follows grain's checkpoint
    protocol (`get_state` bytes / `set_state` / `start_prefetch`), so checkpoints keep their
    layout whichever path trained them.
    """

    def __init__(self, next_batch: int = 0):
        self.next_batch = int(next_batch)

    def get_state(self) -> bytes:
        return json.dumps({"next_batch": self.next_batch}).encode()

    def set_state(self, state: bytes) -> None:
        # A checkpoint written by the grain path holds grain's own state instead; the step of
        # the restored train state says where to continue either way.
        self.next_batch = int(json.loads(state).get("next_batch", -1))

    def start_prefetch(self) -> None:
        """Nothing to prefetch: batches are built on the device."""
