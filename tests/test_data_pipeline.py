"""grain train pipeline (determinism, resume, per-process slices), augmentation, eval padding."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from ltkd_jax.data import (
    CIFAR_MEAN,
    CIFAR_STD,
    ArraySplit,
    augment_batch,
    crop_flip,
    dataset_stats,
    draw_crop_flip,
    eval_batches,
    longtail_counts,
    make_train_iterator,
    normalize,
    num_eval_batches,
)

NUM_CLASSES = 10


def tagged_split(counts, hw=32):
    """Images whose first two pixels encode their index, so batches can be traced back."""
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
    n = len(labels)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    return ArraySplit(images, labels, len(counts))


def index_of(images):
    return images[:, 0, 0, 0].astype(np.int64) * 256 + images[:, 0, 0, 1]


@pytest.fixture(scope="module")
def split():
    return tagged_split(longtail_counts(60, NUM_CLASSES, 10))  # 246 images, 60 ... 6.


def take(it, k):
    return [next(it) for _ in range(k)]


def assert_batches_equal(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def train_iter(split, **kw):
    args = dict(global_batch_size=16, sampler="sqrt", seed=0, num_epochs=2, augment="cifar")
    return make_train_iterator(split, **{**args, **kw})


def test_shapes_dtypes_and_length(split):
    it, steps = train_iter(split, augment="none")
    assert steps == len(split) // 16
    batches = list(it)
    assert len(batches) == 2 * steps
    for b in batches:
        assert set(b) == {"image", "label"}
        assert b["image"].shape == (16, 32, 32, 3) and b["image"].dtype == np.uint8
        assert b["label"].shape == (16,) and b["label"].dtype == np.int32
        # Without augmentation every image is a training image with its own label.
        np.testing.assert_array_equal(split.labels[index_of(b["image"])], b["label"])
        np.testing.assert_array_equal(split.images[index_of(b["image"])], b["image"])


def test_instance_sampler_visits_each_image_once_per_epoch(split):
    it, steps = train_iter(split, sampler="instance", augment="none", num_epochs=1)
    seen = np.concatenate([index_of(b["image"]) for b in it])
    assert len(seen) == steps * 16
    assert len(np.unique(seen)) == len(seen)  # Remainder dropped, no repeats.


def test_class_balanced_batches_are_balanced(split):
    it, _ = train_iter(split, sampler="class_balanced", augment="none", num_epochs=30)
    labels = np.concatenate([b["label"] for b in it])
    freq = np.bincount(labels, minlength=NUM_CLASSES) / len(labels)
    np.testing.assert_allclose(freq, 0.1, atol=0.025)  # 7,680 draws: 5 sigma ~ 0.017.


@pytest.mark.parametrize("augment", ["none", "cifar"])
def test_deterministic_and_seeded(split, augment):
    a = list(train_iter(split, augment=augment)[0])
    assert_batches_equal(a, list(train_iter(split, augment=augment)[0]))
    b = list(train_iter(split, augment=augment, seed=1)[0])
    assert not np.array_equal(a[0]["image"], b[0]["image"])


@pytest.mark.parametrize("sampler", ["instance", "progressive"])
@pytest.mark.parametrize("k", [0, 3, 15, 18])  # 15 steps/epoch: 15 and 18 cross an epoch.
def test_resume_gives_identical_batches(split, sampler, k):
    it, steps = train_iter(split, sampler=sampler)
    assert steps == 15
    take(it, k)
    state = it.get_state()
    json.dumps(state)  # Small and JSON-able, as orbax's grain handler stores it.
    expected = take(it, 8)
    resumed, _ = train_iter(split, sampler=sampler)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 8), expected)


def test_set_state_rewinds(split):
    it, _ = train_iter(split)
    start = it.get_state()
    first = take(it, 4)
    it.set_state(start)
    assert_batches_equal(take(it, 4), first)


@pytest.mark.parametrize("process_count", [2, 4])
@pytest.mark.parametrize("augment", ["none", "cifar"])
def test_process_slices_concatenate_to_global_batch(split, process_count, augment):
    full = take(train_iter(split, augment=augment)[0], 5)
    parts = [
        take(
            train_iter(split, augment=augment, process_index=p, process_count=process_count)[0],
            5,
        )
        for p in range(process_count)
    ]
    for step, global_batch in enumerate(full):
        for key in ("image", "label"):
            local = [parts[p][step][key] for p in range(process_count)]
            assert local[0].shape[0] == 16 // process_count
            np.testing.assert_array_equal(np.concatenate(local), global_batch[key])


def test_invalid_arguments(split):
    with pytest.raises(ValueError, match="not divisible"):
        train_iter(split, process_count=3)
    with pytest.raises(ValueError, match="exceeds"):
        train_iter(split, global_batch_size=1000)
    with pytest.raises(ValueError, match="unknown augmentation"):
        train_iter(split, augment="autoaugment")
    with pytest.raises(ValueError, match="unknown sampler"):
        train_iter(split, sampler="balanced")


@pytest.mark.slow  # starts worker processes
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_multiprocess_workers_match_and_resume(split):
    """mp_prefetch workers produce the in-process batches and resume exactly."""
    expected = take(train_iter(split)[0], 10)
    it, _ = train_iter(split, num_workers=2)
    try:
        assert_batches_equal(take(it, 4), expected[:4])
        state = it.get_state()
    finally:
        it.close()
    resumed, _ = train_iter(split, num_workers=2)
    try:
        resumed.set_state(state)
        assert_batches_equal(take(resumed, 6), expected[4:])
    finally:
        resumed.close()


# --------------------------------------------------------------------------------------------
# Augmentation and normalisation
# --------------------------------------------------------------------------------------------


def test_crop_flip_matches_pad_and_slice():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    rows, cols = np.array([0, 8, 4, 3, 8, 0]), np.array([0, 8, 4, 7, 0, 8])
    flips = np.array([False, False, False, True, True, True])
    out = crop_flip(images, rows, cols, flips, pad=4)
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(6):
        window = padded[i, rows[i] : rows[i] + 32, cols[i] : cols[i] + 32]
        np.testing.assert_array_equal(out[i], window[:, ::-1] if flips[i] else window)
    np.testing.assert_array_equal(out[2], images[2])  # Centre crop, no flip: unchanged.
    np.testing.assert_array_equal(out[0, 4:, 4:], images[0, :28, :28])  # Shifted by 4.
    assert (out[0, :4] == 0).all() and (out[0, :, :4] == 0).all()  # Zero padding.


def test_random_augmentation_is_a_window_of_the_padded_image():
    rng = np.random.default_rng(2)
    images = rng.integers(1, 256, (64, 32, 32, 3), dtype=np.uint8)
    out = augment_batch(images, np.random.default_rng(7))
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    found = []
    for i in range(len(images)):
        hits = [
            (r, c, f)
            for r in range(9)
            for c in range(9)
            for f in (False, True)
            if np.array_equal(
                out[i],
                padded[i, r : r + 32, c : c + 32][:, ::-1]
                if f
                else padded[i, r : r + 32, c : c + 32],
            )
        ]
        assert len(hits) == 1
        found.append(hits[0])
    rows, cols, flips = zip(*found, strict=True)
    # The parameters are the ones drawn from the same seed.
    ref = draw_crop_flip(np.random.default_rng(7), 64)
    np.testing.assert_array_equal(rows, ref[0])
    np.testing.assert_array_equal(cols, ref[1])
    np.testing.assert_array_equal(flips, ref[2])
    assert 10 < sum(flips) < 54  # p = 0.5 over 64 images.
    np.testing.assert_array_equal(out, augment_batch(images, np.random.default_rng(7)))
    assert augment_batch(images, rng, "none") is images


def test_crop_flip_general_sizes():
    images = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8, 1)
    out = crop_flip(images, np.array([1, 1]), np.array([1, 1]), np.array([False, True]), pad=1)
    np.testing.assert_array_equal(out[0], images[0])
    np.testing.assert_array_equal(out[1], images[1][:, ::-1])


def test_normalize_numpy_and_jax():
    images = np.array([[[[0, 255, 128]]]], dtype=np.uint8)
    expected = (images / 255.0 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
    out_np = normalize(images, CIFAR_MEAN, CIFAR_STD)
    assert out_np.dtype == np.float32
    np.testing.assert_allclose(out_np, expected, rtol=1e-6)
    out_jax = normalize(jnp.asarray(images), CIFAR_MEAN, CIFAR_STD)
    assert out_jax.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out_jax), expected, rtol=1e-6)


def test_dataset_stats():
    assert dataset_stats("cifar100") == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert dataset_stats("cifar10") == dataset_stats("cifar100")
    assert dataset_stats("digits") == ((0.5,), (0.5,))
    with pytest.raises(ValueError):
        dataset_stats("imagenet")


# --------------------------------------------------------------------------------------------
# Eval batches
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,batch_size,process_count", [(23, 4, 1), (23, 6, 3), (7, 12, 3), (24, 6, 3)]
)
def test_eval_counts_every_example_once(n, batch_size, process_count):
    split = tagged_split([n])
    per_process = [
        list(
            eval_batches(split, batch_size=batch_size, process_index=p, process_count=process_count)
        )
        for p in range(process_count)
    ]
    num = num_eval_batches(n, batch_size, process_count)
    assert num == -(-n // batch_size)
    assert all(len(batches) == num for batches in per_process)
    seen = []
    for step in range(num):
        # The global batch, as make_array_from_process_local_data would assemble it.
        batch = {
            k: np.concatenate([pp[step][k] for pp in per_process]) for k in per_process[0][step]
        }
        assert batch["image"].shape == (batch_size, 32, 32, 3)
        assert batch["image"].dtype == np.uint8
        assert batch["label"].dtype == np.int32 and batch["mask"].dtype == bool
        seen.append(index_of(batch["image"])[batch["mask"]])
    # Deterministic order: the whole split in order, each example exactly once.
    np.testing.assert_array_equal(np.concatenate(seen), np.arange(n))


def test_eval_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="not divisible"):
        list(eval_batches(tagged_split([5]), batch_size=4, process_count=3))
