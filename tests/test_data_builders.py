"""TF-free TFDS builders and load_dataset: tiny generated zips and pickle tarballs, errors, the
real CIFAR archives."""

import io
import os
import pathlib
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import SHARED_DATA
from PIL import Image

from ltkd_jax.data import (
    ArraySplit,
    builders,
    cifar,
    load_dataset,
    load_digits,
    longtail_counts,
    make_longtail,
    make_train_iterator,
    shot_groups,
)

C10 = builders.CIFAR10_CLASSES
CIFAR10_ZIP = SHARED_DATA / "cifar10-jpeg.zip"
CIFAR100_ZIP = SHARED_DATA / "cifar100-png.zip"


def encode(image, fmt):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def write_zip(path, ids_per_split, fmt="PNG", seed=0, override=None):
    """Writes `{split}/<class>/<NNNN>.<ext>` members; returns {split: (images, labels)} in
    (label, id) order, decoded from the bytes written."""
    ext = "png" if fmt == "PNG" else "jpg"
    rng = np.random.default_rng(seed)
    expected = {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for split, ids in ids_per_split.items():
            images, labels = [], []
            for label, name in enumerate(C10):
                decoded = {}
                for idx in ids:  # Written out of order: readers must sort by the numeric id.
                    member = f"{split}/{name}/{idx:04d}.{ext}"
                    data = encode(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), fmt)
                    data = (override or {}).get(member, data)
                    zf.writestr(member, data)
                    if member not in (override or {}):
                        decoded[idx] = np.asarray(Image.open(io.BytesIO(data)))
                images += [decoded[idx] for idx in sorted(decoded)]
                labels += [label] * len(decoded)
            expected[split] = (np.stack(images), np.asarray(labels, np.int32))
    return expected


IDS = {"train": [3, 0, 10, 2], "test": [0, 1]}


@pytest.fixture
def tiny_zip(tmp_path):
    path = tmp_path / "tiny.zip"
    return path, write_zip(path, IDS)


def assert_split(split, expected):
    images, labels = expected
    assert isinstance(split, ArraySplit)
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.labels, labels)
    np.testing.assert_array_equal(split.images, images)  # Pixel-exact, (label, id) order.


def test_tiny_png_zip_round_trip(tiny_zip, tmp_path, monkeypatch):
    archive, expected = tiny_zip
    data_dir = tmp_path / "tfds"
    train, test, *_ = load_dataset("cifar10", data_dir=str(data_dir), archive=str(archive))
    assert_split(train, expected["train"])
    assert_split(test, expected["test"])
    assert train.num_classes == 10 and train.class_names == C10
    # Prepared as ArrayRecord, readable by name with tfds.data_source in any process.
    version_dir = data_dir / "ltkd_cifar" / "cifar10" / "1.0.0"
    assert list(version_dir.glob("ltkd_cifar-train.array_record-*"))
    source = tfds.data_source("ltkd_cifar/cifar10", split="train", data_dir=str(data_dir))
    assert len(source) == 40 and source[0]["image"].shape == (32, 32, 3)
    # The second load comes from the .npy cache, without decoding (or the archive).
    monkeypatch.setattr(cifar, "decode_split", lambda *a, **k: pytest.fail("decoded again"))
    again, _, *_ = load_dataset("cifar10", data_dir=str(data_dir))
    assert_split(again, expected["train"])


def test_tiny_jpeg_zip_bytes_kept(tmp_path):
    archive = tmp_path / "tiny.zip"
    expected = write_zip(archive, IDS, fmt="JPEG")
    train, test, *_ = load_dataset("cifar10", data_dir=str(tmp_path / "tfds"), archive=str(archive))
    assert_split(train, expected["train"])  # JPEG bytes stored unchanged: same decode.
    assert_split(test, expected["test"])


def test_stale_cache_is_rebuilt(tiny_zip, tmp_path):
    archive, expected = tiny_zip
    data_dir = str(tmp_path / "tfds")
    load_dataset("cifar10", data_dir=data_dir, archive=str(archive))
    cache = tmp_path / "tfds" / "ltkd_cifar" / "cifar10" / "1.0.0" / "ltkd_decoded"
    np.save(cache / "train_labels.npy", np.zeros(3, np.int32))
    train, _, *_ = load_dataset("cifar10", data_dir=data_dir)
    assert_split(train, expected["train"])


def test_corrupt_image_names_member_and_leaves_nothing(tmp_path):
    bad = tmp_path / "bad.zip"
    member = "train/cat/0002.png"
    write_zip(bad, IDS, override={member: b"\x89PNG\r\n\x1a\n truncated"})
    data_dir = tmp_path / "tfds"
    with pytest.raises(ValueError, match=f"corrupt image '{member}'"):
        load_dataset("cifar10", data_dir=str(data_dir), archive=str(bad))
    # No (partial) dataset that a later run would trust.
    config_dir = data_dir / "ltkd_cifar" / "cifar10"
    assert not (config_dir / "1.0.0").exists()
    assert not [p for p in config_dir.iterdir() if "incomplete" in p.name]
    good = tmp_path / "good.zip"
    expected = write_zip(good, IDS, seed=1)
    train, _, *_ = load_dataset("cifar10", data_dir=str(data_dir), archive=str(good))
    assert_split(train, expected["train"])


def test_wrong_size_image_is_rejected(tmp_path):
    bad = tmp_path / "bad.zip"
    member = "test/dog/0001.png"
    write_zip(bad, IDS, override={member: encode(np.zeros((28, 28, 3), np.uint8), "PNG")})
    with pytest.raises(ValueError, match=f"'{member}'.*28x28"):
        load_dataset("cifar10", data_dir=str(tmp_path / "tfds"), archive=str(bad))


def test_missing_archive(tmp_path):
    missing = tmp_path / "nowhere" / "cifar100-png.zip"
    with pytest.raises(FileNotFoundError, match="archive not found.*--config.data.archive="):
        load_dataset("cifar100", data_dir=str(tmp_path / "tfds"), archive=str(missing))


def test_zip_without_expected_layout(tmp_path):
    bad = tmp_path / "flat.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("train/cat/0000.png", encode(np.zeros((32, 32, 3), np.uint8), "PNG"))
        zf.writestr("readme.txt", b"hello")
    with pytest.raises(ValueError, match=r"expected layout.*readme.txt.*lacks 9 of 10"):
        load_dataset("cifar10", data_dir=str(tmp_path / "tfds"), archive=str(bad))
    # The CIFAR-10 zip's classes are not CIFAR-100's.
    with pytest.raises(ValueError, match="unknown class folders"):
        load_dataset("cifar100", data_dir=str(tmp_path / "tfds"), archive=str(bad))
    not_a_zip = tmp_path / "x.zip"
    not_a_zip.write_bytes(b"plain text")
    with pytest.raises(ValueError, match="not a readable zip"):
        load_dataset("cifar10", data_dir=str(tmp_path / "tfds"), archive=str(not_a_zip))


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*--config.data.name"):
        load_dataset("imagenet")


def test_offline_without_archive_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setattr(cifar, "url_reachable", lambda url, timeout=5.0: False)
    with pytest.raises(
        FileNotFoundError, match="unreachable.*--config.data.archive=.*cifar10-jpeg"
    ):
        load_dataset("cifar10", data_dir=str(tmp_path / "tfds"))
    assert not (tmp_path / "tfds" / "ltkd_cifar" / "cifar10" / "1.0.0").exists()


def write_cifar10_pickles(root):
    """A tiny copy of cifar-10-batches-py (bytes keys, as the python2 pickles load)."""
    rng = np.random.default_rng(5)
    out = root / "cifar-10-batches-py"
    out.mkdir(parents=True)
    all_images, all_labels = {}, {}
    for split, files in builders.CIFAR10_CONFIG.pickle_files.items():
        images, labels = [], []
        for fname in files:
            n = 7
            img = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            lab = rng.integers(0, 10, n).tolist()
            rows = img.transpose(0, 3, 1, 2).reshape(n, 3072)  # Channel planes, row-major.
            with open(out / fname, "wb") as f:
                pickle.dump({b"data": rows, b"labels": lab}, f, protocol=2)
            images.append(img)
            labels += lab
        all_images[split], all_labels[split] = np.concatenate(images), np.asarray(labels)
    return all_images, all_labels


def test_official_download_path(tmp_path, monkeypatch):
    """The pickle branch, with TFDS's download manager pointed at a local extracted copy."""
    images, labels = write_cifar10_pickles(tmp_path / "extracted")
    urls = []

    def fake_download_and_extract(self, url):
        urls.append(url)
        return str(tmp_path / "extracted")

    monkeypatch.setattr(cifar, "url_reachable", lambda url, timeout=5.0: True)
    monkeypatch.setattr(
        tfds.download.DownloadManager, "download_and_extract", fake_download_and_extract
    )
    train, test, *_ = load_dataset("cifar10", data_dir=str(tmp_path / "tfds"))
    assert urls == ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"]
    for split, got in (("train", train), ("test", test)):
        order = np.argsort(labels[split], kind="stable")  # (label, original order)
        np.testing.assert_array_equal(got.labels, labels[split][order])
        np.testing.assert_array_equal(got.images, images[split][order])  # Lossless PNG.


def test_digits_quick_start_needs_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(cifar, "prepare_cifar", lambda *a, **k: pytest.fail("touched TFDS"))
    train, test, *_ = load_dataset("digits")
    assert list(tmp_path.iterdir()) == []
    assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
    assert len(train) + len(test) == 1797 and train.num_classes == 10
    assert train.images.max() == 255 and train.images.min() == 0
    np.testing.assert_allclose(
        test.class_counts() / (train.class_counts() + test.class_counts()), 1 / 3, atol=0.01
    )
    assert_split(load_digits()[0], (train.images, train.labels))  # Deterministic.
    lt = make_longtail(train, 10)
    np.testing.assert_array_equal(
        lt.class_counts(), longtail_counts(train.class_counts().min(), 10, 10)
    )
    it, steps = make_train_iterator(
        lt, global_batch_size=32, sampler="class_balanced", seed=0, num_epochs=1, augment="none"
    )
    assert steps == len(lt) // 32
    assert next(it)["image"].shape == (32, 8, 8, 1)


# --------------------------------------------------------------------------------------------
# The real archives in ../shared/data (skipped where absent)
# --------------------------------------------------------------------------------------------


def real_data_dir():
    """A persistent dir, so repeated runs reuse the prepared + decoded data (~1 s)."""
    default = pathlib.Path.home() / ".cache" / "ltkd_jax_data"
    return str(os.environ.get("LTKD_JAX_DATA_DIR", default))


def needs(archive):
    return pytest.mark.skipif(
        not archive.is_file(),
        reason=f"real CIFAR archive {archive} absent (../shared/data is not mounted here)",
    )


@pytest.fixture(scope="session")
def cifar100():
    return load_dataset("cifar100", data_dir=real_data_dir(), archive=str(CIFAR100_ZIP))


@needs(CIFAR100_ZIP)
@pytest.mark.slow
def test_real_cifar100(cifar100):
    train, test, _ = cifar100
    assert (len(train), len(test)) == (50_000, 10_000)
    assert set(train.class_counts()) == {500} and set(test.class_counts()) == {100}
    assert train.class_names[0] == "apple" and train.class_names[-1] == "worm"
    means = train.images.reshape(-1, 3).mean(0) / 255
    np.testing.assert_allclose(means, (0.5071, 0.4865, 0.4409), atol=1e-3)
    with zipfile.ZipFile(CIFAR100_ZIP) as zf:  # Pixel-exact, (label, NNNN) order.
        for label, idx in [(0, 0), (42, 317), (99, 499)]:
            data = zf.read(f"train/{train.class_names[label]}/{idx:04d}.png")
            np.testing.assert_array_equal(
                train.images[label * 500 + idx], Image.open(io.BytesIO(data))
            )
    lt = make_longtail(train, 100)
    assert len(lt) == 10_847
    assert tuple(np.bincount(shot_groups(lt.class_counts()))) == (35, 35, 30)
    it, steps = make_train_iterator(
        lt, global_batch_size=128, sampler="instance", seed=0, num_epochs=1
    )
    assert steps == 84
    batch = next(it)
    assert batch["image"].shape == (128, 32, 32, 3)


@needs(CIFAR10_ZIP)
@pytest.mark.slow
def test_real_cifar10():
    train, test, *_ = load_dataset("cifar10", data_dir=real_data_dir(), archive=str(CIFAR10_ZIP))
    assert (len(train), len(test)) == (50_000, 10_000)
    assert set(train.class_counts()) == {5000} and set(test.class_counts()) == {1000}
    assert train.class_names == C10
    # JPEG re-encoding shifts the means slightly from the published (0.4914, 0.4822, 0.4465).
    np.testing.assert_allclose(
        train.images.reshape(-1, 3).mean(0) / 255, (0.4914, 0.4822, 0.4465), atol=5e-3
    )
    lt = make_longtail(train, 100)
    np.testing.assert_array_equal(
        lt.class_counts(), [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    )


def test_official_pickle_tarball_as_the_archive_is_lossless_and_recorded(tmp_path):
    """A local copy of cifar-10-python.tar.gz gives the original pixels, and the split says
    where they came from (task.json's data_source); a JPEG zip says it is lossy."""
    images, labels = write_cifar10_pickles(tmp_path / "extracted")
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "extracted" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    train, test, *_ = load_dataset("cifar10", data_dir=str(tmp_path / "tfds"), archive=str(tarball))
    for split, got in (("train", train), ("test", test)):
        order = np.argsort(labels[split], kind="stable")  # (label, original order)
        np.testing.assert_array_equal(got.labels, labels[split][order])
        np.testing.assert_array_equal(got.images, images[split][order])  # the exact pixels
    source = {"source": "archive:cifar-10-python.tar.gz", "encoding": "png", "lossless": True}
    assert train.data_source == test.data_source == source
    assert train.subset(np.arange(3)).data_source == source  # a long-tailed cut keeps it

    jpeg_zip = tmp_path / "tiny.zip"
    write_zip(jpeg_zip, IDS, fmt="JPEG")
    train, *_ = load_dataset("cifar10", data_dir=str(tmp_path / "jpeg"), archive=str(jpeg_zip))
    assert train.data_source == {
        "source": "archive:tiny.zip",
        "encoding": "jpeg",
        "lossless": False,
    }


def test_a_tarball_that_is_not_the_official_one_is_named(tmp_path):
    tarball = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(__file__, arcname="something/else.py")
    with pytest.raises(ValueError, match="has no cifar-10-batches-py/data_batch_1"):
        load_dataset("cifar10", data_dir=str(tmp_path / "tfds"), archive=str(tarball))
    assert not (tmp_path / "tfds" / "ltkd_cifar" / "cifar10" / "1.0.0").exists()
