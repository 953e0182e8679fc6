"""Long-tailed counts, LDAM-DRW subset parity and shot groups (docs/data.md, docs/evaluation.md)."""

import numpy as np
import pytest

from ltkd_jax.config import defaults
from ltkd_jax.data import (
    ArraySplit,
    DataSplits,
    longtail_counts,
    longtail_indices,
    make_longtail,
    shot_groups,
)
from ltkd_jax.data.longtail import tail33_groups
from ltkd_jax.data.task import task_splits

# LDAM-DRW's exp profile (imbalance_cifar.py): (C, n_max, IF, total, last count,
# many/medium/few classes).
TABLE = [
    (10, 5000, 100, 12406, 50, (8, 2, 0)),
    (10, 5000, 50, 13996, 100, (9, 1, 0)),
    (10, 5000, 10, 20431, 500, (10, 0, 0)),
    (100, 500, 100, 10847, 5, (35, 35, 30)),
    (100, 500, 50, 12608, 10, (41, 41, 18)),
    (100, 500, 10, 19573, 50, (69, 31, 0)),
    (100, 500, 200, 9502, 2, (30, 31, 39)),
]


def test_cifar10_lt_if100_counts():
    counts = longtail_counts(5000, 10, 100)
    np.testing.assert_array_equal(counts, [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])
    assert counts.sum() == 12406
    assert counts.dtype == np.int64


@pytest.mark.parametrize("num_classes,n_max,imb,total,last,groups", TABLE)
def test_methods_table(num_classes, n_max, imb, total, last, groups):
    counts = longtail_counts(n_max, num_classes, imb)
    assert counts.sum() == total
    assert counts[0] == n_max and counts[-1] == last
    assert (np.diff(counts) <= 0).all()
    assert tuple(np.bincount(shot_groups(counts), minlength=3)) == groups


def ldam_counts(n_max, num_classes, imb_factor, imb_type):
    """LDAM-DRW's get_img_num_per_cls, re-implemented verbatim (imb_factor = 1/IF)."""
    out = []
    if imb_type == "exp":
        for cls_idx in range(num_classes):
            out.append(int(n_max * (imb_factor ** (cls_idx / (num_classes - 1.0)))))
    else:
        out += [int(n_max)] * (num_classes // 2) + [int(n_max * imb_factor)] * (num_classes // 2)
    return out


@pytest.mark.parametrize("imb", [1, 2, 3, 7, 10, 20, 50, 100, 200, 256])
@pytest.mark.parametrize("profile", ["exp", "step"])
def test_counts_match_ldam_formula(imb, profile):
    for num_classes, n_max in [(10, 5000), (100, 500)]:
        ours = longtail_counts(n_max, num_classes, imb, profile)
        np.testing.assert_array_equal(ours, ldam_counts(n_max, num_classes, 1 / imb, profile))


def test_step_profile():
    np.testing.assert_array_equal(longtail_counts(500, 4, 10, "step"), [500, 500, 50, 50])
    # Odd C: the extra class goes to the tail (LDAM's loop would drop it).
    np.testing.assert_array_equal(longtail_counts(100, 5, 4, "step"), [100, 100, 25, 25, 25])


def test_balanced_and_invalid():
    np.testing.assert_array_equal(longtail_counts(500, 100, 1), [500] * 100)
    with pytest.raises(ValueError, match="imbalance_factor must be >= 1"):
        longtail_counts(500, 100, 0.01)
    with pytest.raises(ValueError, match="unknown long-tail profile"):
        longtail_counts(500, 100, 10, "pareto")


@pytest.fixture
def restore_global_rng():
    state = np.random.get_state()  # noqa: NPY002 (the LDAM code uses the global RNG)
    yield
    np.random.set_state(state)  # noqa: NPY002


def ldam_select(targets, counts, rand_number=0):
    """LDAM-DRW's gen_imbalanced_data selection, with the global numpy RNG, as in the repo."""
    np.random.seed(rand_number)  # noqa: NPY002
    selected = []
    for the_class, the_img_num in zip(np.unique(targets), counts, strict=True):
        idx = np.where(targets == the_class)[0]
        np.random.shuffle(idx)  # noqa: NPY002
        selected.append(idx[:the_img_num])
    return np.concatenate(selected)


@pytest.mark.usefixtures("restore_global_rng")
@pytest.mark.parametrize("num_classes,per_class,imb", [(10, 500, 100), (100, 50, 100)])
def test_indices_match_ldam_generator(num_classes, per_class, imb):
    # Original cross-class order, as in the CIFAR pickles.
    targets = np.random.RandomState(123).permutation(np.repeat(np.arange(num_classes), per_class))
    counts = longtail_counts(per_class, num_classes, imb)
    np.testing.assert_array_equal(
        longtail_indices(targets, counts, seed=0), ldam_select(targets, counts)
    )


@pytest.mark.usefixtures("restore_global_rng")
def test_class_sorted_order_selects_the_same_images():
    """load_dataset orders train by (label, within-class index); the LT subset is unchanged."""
    num_classes, per_class = 10, 300
    targets = np.random.RandomState(7).permutation(np.repeat(np.arange(num_classes), per_class))
    counts = longtail_counts(per_class, num_classes, 100)
    ldam_images = ldam_select(targets, counts)  # Positions in the original order.
    by_class = np.argsort(targets, kind="stable")  # Sorted position -> original position.
    ours = by_class[longtail_indices(targets[by_class], counts, seed=0)]
    np.testing.assert_array_equal(ours, ldam_images)


def test_indices_deterministic_and_seeded():
    labels = np.repeat(np.arange(5), 40)
    counts = longtail_counts(40, 5, 10)
    a, b = longtail_indices(labels, counts, 0), longtail_indices(labels, counts, 0)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, longtail_indices(labels, counts, 1))
    np.testing.assert_array_equal(np.bincount(labels[a]), counts)
    assert len(np.unique(a)) == len(a)
    with pytest.raises(ValueError, match="cannot keep"):
        longtail_indices(labels, counts * 2)


def test_make_longtail_uses_smallest_class_as_n_max():
    labels = np.repeat(np.arange(4), [60, 50, 55, 70]).astype(np.int32)
    images = np.arange(len(labels), dtype=np.uint8).reshape(-1, 1, 1, 1)
    split = ArraySplit(images, labels, 4)
    lt = make_longtail(split, 10)
    np.testing.assert_array_equal(lt.class_counts(), longtail_counts(50, 4, 10))
    # Images travel with their labels.
    np.testing.assert_array_equal(labels[lt.images.ravel()], lt.labels)
    np.testing.assert_array_equal(make_longtail(split, 10).images, lt.images)


def test_shot_group_boundaries():
    np.testing.assert_array_equal(shot_groups([500, 101, 100, 20, 19, 1]), [0, 0, 1, 1, 2, 2])
    assert shot_groups([5]).dtype == np.int32
    np.testing.assert_array_equal(shot_groups([10, 30], many=25, few=15), [2, 0])


def _split_of_counts(counts):
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
    return ArraySplit(np.zeros((len(labels), 2, 2, 1), np.uint8), labels, len(counts))


def test_a_runs_shot_groups_come_from_its_training_counts():
    """The test split's counts run the other way: groups from them would be reversed."""
    d = defaults.base_config().data
    d.imbalance_factor, d.many_threshold, d.few_threshold = 1.0, 20, 5
    splits = DataSplits(_split_of_counts([30, 10, 2]), _split_of_counts([2, 10, 30]))
    task = task_splits(splits, d)
    np.testing.assert_array_equal(task.class_counts, [30, 10, 2])
    np.testing.assert_array_equal(task.class_groups, [0, 1, 2])  # many > 20, few < 5


def test_tail33_groups_are_33_34_33_by_count():
    counts = longtail_counts(500, 100, 100.0)
    groups = tail33_groups(counts)
    assert np.bincount(groups).tolist() == [33, 34, 33]
    assert (groups[:33] == 0).all() and (groups[-33:] == 2).all()  # sorted by count
    assert np.bincount(tail33_groups(longtail_counts(5000, 10, 100.0))).tolist() == [3, 4, 3]
