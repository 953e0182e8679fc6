"""Record splits: TFDS builders via mock_data, list-file benchmarks, eval counting, the CBD
stream resampler (docs/sampling.md#cbd-stream) and ImageNet-style augmentation
(docs/data.md#augmentation)."""

import io
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from ltkd_jax import data
from ltkd_jax.data import augment

MOCK = dict(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE)


@pytest.mark.parametrize(
    "name, num_classes, eval_size", [("imagenet_lt", 1000, 12), ("inat2018", 8142, 12)]
)
def test_tfds_builders_through_the_real_pipeline(name, num_classes, eval_size):
    with tfds.testing.mock_data(**MOCK):
        train_split, test_split, *_ = data.load_dataset(name, image_size=32, in_memory="no")
        assert isinstance(train_split, data.RecordSplit)
        assert train_split.num_classes == num_classes and len(train_split) == 12
        assert train_split.class_counts().sum() == 12
        lt = data.make_longtail(train_split, 1.0)  # already long-tailed: unchanged
        assert lt is train_split
        it, steps = data.make_train_iterator(
            train_split,
            global_batch_size=4,
            sampler="instance",
            seed=0,
            num_epochs=1,
            augment="imagenet",
            crop_min_area=0.05,
        )
        batch = next(it)
        assert steps == 3 and batch["image"].shape == (4, 32, 32, 3)
        assert batch["image"].dtype == np.uint8 and batch["label"].dtype == np.int32
        batches = list(data.eval_batches(test_split, batch_size=8))
        assert sum(int(b["mask"].sum()) for b in batches) == eval_size


def test_tfds_builder_not_prepared_explains_the_way_out(tmp_path):
    with pytest.raises(FileNotFoundError, match="--config.data.root"):
        data.load_dataset("imagenet_lt", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="no TFDS builder"):
        data.load_dataset("places_lt", data_dir=str(tmp_path))


def _jpeg(value: int, shape=(40, 48, 3)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full(shape, value, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def test_list_file_builder_imagenet_lt(tmp_path):
    """OLTR-style lists: `train/<wnid>/<file> label` relative to the image root."""
    root, lists = tmp_path / "imagenet", tmp_path / "lists"
    lists.mkdir()
    counts = {"train": [6, 3, 1], "validation": [1, 1, 1], "test": [2, 2, 2]}
    for split, per_class in counts.items():
        lines = []
        for label, n in enumerate(per_class):
            for i in range(n):
                rel = f"{'train' if split != 'test' else 'val'}/n{label:03d}/{split}_{i}.JPEG"
                (root / os.path.dirname(rel)).mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(_jpeg(40 * label))
                lines.append(f"{rel} {label}")
        name = {"train": "train", "validation": "val", "test": "test"}[split]
        (lists / f"ImageNet_LT_{name}.txt").write_text("\n".join(lines) + "\n")
    train_split, test_split, *_ = data.load_dataset(
        "imagenet_lt",
        data_dir=str(tmp_path / "tfds"),
        archive=str(root),
        list_dir=str(lists),
        image_size=32,
        in_memory="no",
    )
    assert train_split.num_classes == 1000  # the benchmark's classes, not the ones listed
    np.testing.assert_array_equal(train_split.class_counts()[:3], [6, 3, 1])
    np.testing.assert_array_equal(test_split.class_counts()[:3], [2, 2, 2])
    image = next(data.eval_batches(test_split, batch_size=6))["image"]
    assert image.shape == (6, 32, 32, 3)
    with pytest.raises(FileNotFoundError, match="list_dir"):
        data.load_dataset("places_lt", archive=str(root), list_dir=str(lists))


class _ArraySource(list):
    """A random-access source of already decoded examples (like a mock)."""


@pytest.mark.parametrize("n", [1, 7, 24, 25])
@pytest.mark.parametrize("process_count", [1, 2, 3])
@pytest.mark.parametrize("kind", ["record", "array"])
def test_every_eval_example_counts_exactly_once(n, process_count, kind):
    labels = np.arange(n, dtype=np.int32)  # one class per example: identifies it
    images = np.zeros((n, 4, 4, 3), np.uint8)
    if kind == "record":
        source = _ArraySource({"image": images[i], "label": i} for i in range(n))
        split = data.RecordSplit(source, np.arange(n), labels, n, image_size=4)
    else:
        split = data.ArraySplit(images, labels, n)
    batch_size = 6  # global; divisible by 1, 2, 3
    seen = np.zeros(n, np.int64)
    lengths = set()
    for p in range(process_count):
        batches = list(
            data.eval_batches(
                split, batch_size=batch_size, process_index=p, process_count=process_count
            )
        )
        lengths.add(len(batches))  # same number of batches on every host
        for b in batches:
            assert len(b["label"]) == batch_size // process_count
            np.add.at(seen, b["label"][b["mask"]], 1)
    assert len(lengths) == 1
    np.testing.assert_array_equal(seen, 1)


def test_cbd_stream_ratios_and_balance():
    """n = [100, 20, 5] -> r = (1/3) / pi = [0.416667, 2.083333, 8.333333]."""
    counts = np.array([100, 20, 5])
    np.testing.assert_allclose(
        data.cbd_repeat_ratios(counts), [0.416667, 2.083333, 8.333333], atol=1e-6
    )
    labels = np.repeat(np.arange(3), counts)
    rng = np.random.default_rng(0)
    passes = [data.cbd_stream_pass(labels, data.cbd_repeat_ratios(counts), rng) for _ in range(200)]
    freq = np.bincount(labels[np.concatenate(passes)], minlength=3) / sum(map(len, passes))
    np.testing.assert_allclose(freq, [1 / 3] * 3, atol=0.01)
    np.testing.assert_allclose(np.mean([len(p) for p in passes]), 125, rtol=0.02)
    # Class 2 images: each 8 or 9 times per pass; head images 0 or 1 times.
    reps = np.bincount(passes[0], minlength=125)
    assert set(reps[labels == 2]) <= {8, 9} and set(reps[labels == 0]) <= {0, 1}
    seq = data.ReweightedIndexSequence(
        labels, 3, sampler="cbd_stream", seed=1, epoch_len=125, num_epochs=2
    )
    again = data.ReweightedIndexSequence(
        labels, 3, sampler="cbd_stream", seed=1, epoch_len=125, num_epochs=2
    )
    assert len(seq) == 250 and list(seq[100:140]) == list(again[100:140])


def test_random_resized_crop_follows_torchvision():
    rng = np.random.default_rng(0)
    areas, ratios = [], []
    for _ in range(2000):
        left, top, w, h = augment.draw_resized_crop(rng, 200, 100, min_area=0.05)
        assert 0 <= left and left + w <= 200 and 0 <= top and top + h <= 100
        areas.append(w * h / 20000)
        ratios.append(w / h)
    assert min(areas) >= 0.04 and max(areas) <= 1.0
    assert 0.7 < min(ratios) and max(ratios) < 1.4
    # Too-wide image: every try fails -> centre crop with the largest allowed aspect ratio.
    assert augment.draw_resized_crop(np.random.default_rng(0), 1000, 10, min_area=0.9) == (
        493,
        0,
        13,
        10,
    )


def test_imagenet_transforms_shapes_flip_and_jpeg_draft():
    ramp = np.tile(np.arange(256, dtype=np.uint8)[None, :, None], (300, 1, 3))
    out = augment.resize_center_crop(ramp, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] < out[0, -1, 0]  # left-to-right ramp kept (no flip at eval)
    flips = set()
    for seed in range(20):
        crop = augment.random_resized_crop_flip(ramp, np.random.default_rng(seed), 32)
        assert crop.shape == (32, 32, 3)
        flips.add(bool(crop[0, 0, 0] > crop[0, -1, 0]))
    assert flips == {True, False}
    # A large JPEG decoded at reduced scale (draft) matches the full decode closely.
    big = np.asarray(Image.fromarray(ramp).resize((1024, 1200)))
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format="JPEG", quality=95)
    fast = augment.resize_center_crop(buf.getvalue(), 64).astype(float)
    full = augment.resize_center_crop(big, 64).astype(float)
    assert np.abs(fast - full).mean() < 3.0
