"""Evaluation metrics (ltkd_jax/training/metrics.py) against values computed by hand on an
imbalanced toy test set: top-1, top-5, NLL, per-class accuracy, many / medium / few as the
mean of per-class accuracy within each group (docs/evaluation.md#shot-groups), mean-class."""

import jax
import numpy as np
import pytest

from ltkd_jax.training import metrics

# Seven classes, grouped by *training* counts: 0-2 many, 3-4 medium, 5-6 few.
GROUPS = np.array([0, 0, 0, 1, 1, 2, 2])
# Logit values, none an integer: a top-5 that compared values with labels would match none.
VALUES = np.array([3.7, 2.9, 2.1, 1.3, 0.5, -0.3, -1.1])
# (label, rank of the label's logit) per test image: rank 0 is top-1 correct, ranks 1-4 are
# top-5 correct only, rank 5 or 6 is wrong in both. Imbalanced: 4 / 1 / 2 / 3 / 1 / 2 / 0.
EXAMPLES = [
    (0, 0), (0, 0), (0, 0), (0, 6),  # class 0: top-1 3/4, top-5 3/4
    (1, 2),                          # class 1: top-1 0/1, top-5 1/1
    (2, 0), (2, 5),                  # class 2: top-1 1/2, top-5 1/2
    (3, 0), (3, 1), (3, 0),          # class 3: top-1 2/3, top-5 3/3
    (4, 0),                          # class 4: top-1 1/1, top-5 1/1
    (5, 4), (5, 6),                  # class 5: top-1 0/2, top-5 1/2
]  # fmt: skip
# Padding (mask False): correct class-1 images that must count nowhere. 16 rows in all.
PADDING = [(1, 0)] * 3
# Compiled once per batch shape, as every evaluation path runs it.
eval_counts = jax.jit(metrics.eval_counts)


def logits_with_rank(label: int, rank: int, num_classes: int = 7) -> np.ndarray:
    """Logits whose `rank`-th largest value sits at `label`."""
    others = [c for c in range(num_classes) if c != label]
    order = others[:rank] + [label] + others[rank:]  # classes from the largest logit down
    logits = np.empty(num_classes, np.float32)
    logits[order] = VALUES
    return logits


def toy_batch(examples):
    labels = np.array([y for y, _ in examples], np.int32)
    logits = np.stack([logits_with_rank(y, r) for y, r in examples])
    return logits, labels


@pytest.fixture(scope="module")
def summary():
    logits, labels = toy_batch(EXAMPLES + PADDING)
    mask = np.arange(len(labels)) < len(EXAMPLES)
    counts = jax.device_get(eval_counts(logits, labels, mask))
    return counts, metrics.summarize(counts, GROUPS)


def test_counts_per_class_ignore_padding(summary):
    counts, _ = summary
    np.testing.assert_array_equal(counts["seen"], [4, 1, 2, 3, 1, 2, 0])
    np.testing.assert_array_equal(counts["correct"], [3, 0, 1, 2, 1, 0, 0])
    np.testing.assert_array_equal(counts["correct5"], [3, 1, 1, 3, 1, 1, 0])


def test_top1_top5_and_per_class_accuracy(summary):
    _, out = summary
    assert out["num_examples"] == 13
    assert out["top1"] == pytest.approx(7 / 13, rel=1e-6)  # 3 + 0 + 1 + 2 + 1 + 0 correct
    assert out["top5"] == pytest.approx(10 / 13, rel=1e-6)  # 3 + 1 + 1 + 3 + 1 + 1
    expected = [3 / 4, 0.0, 1 / 2, 2 / 3, 1.0, 0.0]
    np.testing.assert_allclose(out["per_class_acc"][:6], expected, rtol=1e-6)
    assert out["per_class_acc"][6] is None  # no test image: no accuracy, not 0
    assert out["test_imbalance"] == 4.0  # 4 images of class 0 against 1 of classes 1 and 4


def test_groups_are_the_mean_of_per_class_accuracy_not_pooled_images(summary):
    _, out = summary
    # many: (3/4 + 0 + 1/2) / 3; pooling its images would give (3 + 0 + 1) / 7 = 0.571.
    assert out["many"] == pytest.approx((3 / 4 + 0 + 1 / 2) / 3, rel=1e-6)
    # medium: (2/3 + 1) / 2; pooled it would be 3 / 4.
    assert out["medium"] == pytest.approx((2 / 3 + 1) / 2, rel=1e-6)
    assert out["few"] == 0.0  # class 6 has no test image: left out, class 5 alone
    # mean-class: the six classes with test images, unweighted.
    assert out["mean_class_acc"] == pytest.approx((3 / 4 + 0 + 1 / 2 + 2 / 3 + 1 + 0) / 6)


def test_nll_is_the_mean_over_real_images(summary):
    _, out = summary
    logits, labels = toy_batch(EXAMPLES)
    z = logits.astype(np.float64)
    log_softmax = z - np.log(np.exp(z).sum(1, keepdims=True))
    expected = -log_softmax[np.arange(len(labels)), labels].mean()
    # float32 log-softmax over 7 logits of magnitude < 4: each term is exact to a few ulps
    # of its ~5 magnitude (~2e-6); the mean keeps that bound.
    assert out["nll"] == pytest.approx(expected, abs=1e-5)


def test_counts_add_over_batches(summary):
    """Batch by batch (as every evaluation path sums them), the counts are the same."""
    counts, _ = summary
    logits, labels = toy_batch(EXAMPLES + PADDING)
    mask = np.arange(len(labels)) < len(EXAMPLES)
    total = None
    for part in (slice(0, 8), slice(8, 16)):  # the second half holds the padding
        total = metrics.add_counts(total, eval_counts(logits[part], labels[part], mask[part]))
    for key in ("seen", "correct", "correct5"):
        np.testing.assert_array_equal(total[key], counts[key])
    np.testing.assert_allclose(total["nll"], counts["nll"], rtol=1e-6)


def test_a_group_without_test_images_is_none(summary):
    counts, _ = summary
    groups = np.array([0, 0, 0, 1, 1, 1, 2])  # class 6, the only few-shot one, is absent
    out = metrics.summarize(counts, groups)
    assert out["few"] is None
    assert out["medium"] == pytest.approx((2 / 3 + 1 + 0) / 3, rel=1e-6)
