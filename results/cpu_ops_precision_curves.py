"""Training curves with the CPU fast path on and off (results/cpu_ops_precision.md).

Same initial variables, same batches, same augmentation; only the implementation differs:

  flax      Flax's layers, float32 (cpu_kernels=off)
  flax-perm Flax's layers, float32, every batch in another example order (same math, other
            rounding: the float32 noise floor of a trajectory)
  fast      models/cpu_ops.py kernels, float32, with cpu_ops.COMPILER_OPTIONS (cpu_kernels=on)
  flax-f64  Flax's layers in float64: the reference trajectory

CE, SGD momentum 0.9, weight decay 2e-4 (coupled, as optim.make_optimizer), lr 0.05
constant, batch 128, pad-crop + flip, on a class-balanced subset of the real CIFAR-100 train
split (the PNG archive, pixel-exact to the original data).

    python results/cpu_ops_precision_curves.py --model=resnet8 --steps=300 \
        --archive=/work/shared/data/cifar100-png.zip --out=/tmp/curves_resnet8.json
"""

from __future__ import annotations

import argparse
import io
import json
import time
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from ltkd_jax import models
from ltkd_jax.data import augment, builders
from ltkd_jax.methods.ce import cross_entropy
from ltkd_jax.models import cpu_ops

VARIANTS = {  # name: (ops, dtype, permute each batch)
    "flax": ("xla", "float32", False),
    "flax-perm": ("xla", "float32", True),
    "fast": ("cpu", "float32", False),
    "flax-f64": ("xla", "float64", False),
}


def load_subset(archive: str, per_class: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The first `per_class` images of every class of `split` (uint8 NHWC, int32 labels)."""
    rows = builders.index_archive(archive, builders.CIFAR100_CLASSES)[split]
    rows = [r for r in rows if r[2] < per_class]
    with zipfile.ZipFile(archive) as zf:
        images = np.stack([np.asarray(Image.open(io.BytesIO(zf.read(m)))) for m, _, _ in rows])
    return images, np.asarray([label for _, label, _ in rows], np.int32)


def train(variant: str, name: str, steps: int, images, labels, test, batch: int) -> dict:
    ops, dtype_name, permute = VARIANTS[variant]
    dtype = jnp.dtype(dtype_name)
    mean, std = augment.dataset_stats("cifar100")
    model = models.get_model(name, 100, ops=ops, dtype=dtype)
    v = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
    v = jax.tree.map(lambda a: a.astype(dtype), v)
    tx = optax.chain(optax.add_decayed_weights(2e-4), optax.sgd(0.05, momentum=0.9))
    opts = cpu_ops.COMPILER_OPTIONS if ops == "cpu" else None

    def prep(x):
        m, s = np.asarray(mean, dtype_name), np.asarray(std, dtype_name)
        return (x.astype(dtype) / 255 - m) / s

    def step(params, stats, opt, x, y):
        def loss_fn(p):
            (logits, _), upd = model.apply(
                {"params": p, "batch_stats": stats}, prep(x), train=True, mutable=["batch_stats"]
            )
            return cross_entropy(logits, labels=y)[0], (upd["batch_stats"], logits)

        (loss, (stats, logits)), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(g, opt, params)
        acc = jnp.mean(jnp.argmax(logits, -1) == y)
        return optax.apply_updates(params, updates), stats, opt, loss, acc

    def evaluate(params, stats, x, y):
        logits, _ = model.apply({"params": params, "batch_stats": stats}, prep(x), train=False)
        return jnp.sum(jnp.argmax(logits, -1) == y)

    step = jax.jit(step, compiler_options=opts)
    evaluate = jax.jit(evaluate, compiler_options=opts)
    params, stats = v["params"], v["batch_stats"]
    opt = tx.init(params)
    data_rng = np.random.default_rng(0)  # the same batches and crops for every variant
    perm_rng = np.random.default_rng(1)
    losses, accs, start = [], [], time.perf_counter()
    for _ in range(steps):
        idx = data_rng.choice(len(images), batch, replace=False)
        x = augment.augment_batch(images[idx], data_rng)
        y = labels[idx]
        if permute:
            order = perm_rng.permutation(batch)
            x, y = x[order], y[order]
        params, stats, opt, loss, acc = step(params, stats, opt, jnp.asarray(x), jnp.asarray(y))
        losses.append(float(loss))
        accs.append(float(acc))
    seconds = time.perf_counter() - start
    correct = sum(
        int(evaluate(params, stats, jnp.asarray(test[0][i : i + 500]), test[1][i : i + 500]))
        for i in range(0, len(test[1]), 500)
    )
    flat = np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(params)])
    return {
        "loss": losses,
        "train_top1": accs,
        "test_top1": correct / len(test[1]),
        "params": flat.tolist(),
        "seconds": seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet8")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--per_class", type=int, default=100, help="training images per class")
    p.add_argument("--archive", default="/work/shared/data/cifar100-png.zip")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", required=True)
    args = p.parse_args()
    images, labels = load_subset(args.archive, args.per_class, "train")
    test = load_subset(args.archive, 20, "test")
    results = {}
    for variant in args.variants.split(","):
        with jax.enable_x64(VARIANTS[variant][1] == "float64"):
            results[variant] = train(
                variant, args.model, args.steps, images, labels, test, args.batch
            )
        r = results[variant]
        print(
            f"{variant:9s} loss first {r['loss'][0]:.4f} last-20 {np.mean(r['loss'][-20:]):.4f} "
            f"test top-1 {r['test_top1']:.4f} ({r['seconds']:.0f} s)",
            flush=True,
        )
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "results": results}, f)


if __name__ == "__main__":
    main()
