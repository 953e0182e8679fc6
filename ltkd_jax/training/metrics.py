"""Evaluation metrics: per-class counts on device, accuracies and shot groups on the host.

`mean_class_acc` (the unweighted mean of per-class accuracy) is the balanced metric: on a
balanced test split (CIFAR-LT, ImageNet-LT) it equals top-1, on an imbalanced one (a
user's folder) top-1 is dominated by the head classes. The many / medium / few scores are
unweighted means of per-class accuracy within each group, with groups defined by
*training* counts (docs/evaluation.md#shot-groups). Classes without test images are left
out of every mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

GROUP_NAMES = ("many", "medium", "few")


def eval_counts(
    logits: jnp.ndarray,
    labels: jnp.ndarray,
    mask: jnp.ndarray,
    *,
    confusion: bool = False,
    teacher_logits: jnp.ndarray | None = None,
) -> dict:
    """Sums over one batch: per-class seen / top-1 correct / top-5 correct / predicted, the
    NLL sum, with `confusion` the [true, predicted] count matrix, and with `teacher_logits`
    how many predictions agree with the teacher's (big_vision's distillation `agreement`).

    Padded examples (mask False) count nowhere, so every image counts exactly once.
    """
    num_classes = logits.shape[-1]
    logits = logits.astype(jnp.float32)
    weight = mask.astype(jnp.float32)
    onehot = jax.nn.one_hot(labels, num_classes) * weight[:, None]
    prediction = jnp.argmax(logits, -1)
    predicted = jax.nn.one_hot(prediction, num_classes) * weight[:, None]
    correct = (prediction == labels).astype(jnp.float32)
    k = min(5, num_classes)
    top5 = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1).astype(jnp.float32)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]
    counts = {
        "seen": onehot.sum(0),
        "correct": (onehot * correct[:, None]).sum(0),
        "correct5": (onehot * top5[:, None]).sum(0),
        "predicted": predicted.sum(0),
        "nll": jnp.sum(nll * weight),
    }
    if confusion:
        counts["confusion"] = onehot.T @ predicted
    if teacher_logits is not None:
        agree = prediction == jnp.argmax(teacher_logits, -1)
        counts["agree"] = jnp.sum(agree.astype(jnp.float32) * weight)
    return counts


def add_counts(total: dict | None, batch: dict) -> dict:
    batch = jax.tree.map(np.asarray, batch)
    return batch if total is None else jax.tree.map(np.add, total, batch)


def summarize(counts: dict, class_groups: np.ndarray) -> dict:
    """Turns summed counts into top-1, top-5, NLL, per-class and many / medium / few accuracy.

    A group with no evaluated class (CIFAR-10-LT has no few-shot class) is None ("n/a"):
    JSON null, skipped by TensorBoard, never a NaN. `per_class_acc` is None for a class
    without test images. `test_imbalance` = largest / smallest class in the evaluated split
    (1 = balanced).
    """
    seen = np.asarray(counts["seen"])
    present = seen > 0
    per_class = np.asarray(counts["correct"]) / np.maximum(seen, 1)
    total = float(seen.sum())
    out = {
        "top1": float(counts["correct"].sum() / total),
        "top5": float(counts["correct5"].sum() / total),
        "nll": float(counts["nll"] / total),
        "mean_class_acc": float(per_class[present].mean()),
        "test_imbalance": float(seen[present].max() / seen[present].min()),
        "num_examples": int(total),
    }
    if "agree" in counts:  # distillation: top-1 agreement with the (first) teacher
        out["teacher_agreement"] = float(counts["agree"] / total)
    for g, name in enumerate(GROUP_NAMES):
        members = (np.asarray(class_groups) == g) & present
        out[name] = float(per_class[members].mean()) if members.any() else None
    out["per_class_acc"] = [
        float(a) if p else None for a, p in zip(per_class, present, strict=True)
    ]
    return out
