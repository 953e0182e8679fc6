"""A user's own image folders: preparation, corrupt images, pipelines, and training on them."""

import io
import json
import os
import shutil
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import REPO_ROOT
from PIL import Image
from tiny import tiny_config

from ltkd_jax import data, errors
from ltkd_jax.config import checks
from ltkd_jax.data import image_index
from ltkd_jax.errors import UserError
from ltkd_jax.runs import job
from ltkd_jax.training.writers import read_jsonl

TRAIN_COUNTS = (24, 12, 6)  # long-tailed already
TEST_COUNTS = (5, 4, 3)  # uneven on purpose
CLASSES = ("cat", "dog", "emu")


def _encode(image: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt)
    return buf.getvalue()


def make_tree(root, size=32, seed=0) -> dict[str, bytes]:
    """Writes train/test class folders of class-coloured noise; returns {relpath: bytes}.

    Mixes JPEG, PNG, a grayscale JPEG and an RGBA PNG (re-encoded to RGB by the builder).
    """
    rng = np.random.default_rng(seed)
    files = {}
    for split, counts in (("train", TRAIN_COUNTS), ("test", TEST_COUNTS)):
        for c, (name, n) in enumerate(zip(CLASSES, counts, strict=True)):
            for i in range(n):
                base = np.zeros((size, size + 4 * (i % 3), 3), np.int16)
                base[..., c] = 160  # Learnable: the class is the dominant colour.
                image = np.clip(base + rng.integers(0, 80, base.shape), 0, 255).astype(np.uint8)
                fmt = "PNG" if i % 2 else "JPEG"
                if i == 1:
                    image, fmt = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)]), "PNG"
                if i == 2:
                    image = image[..., c]
                files[f"{split}/{name}/{i:03d}.{fmt.lower()}"] = _encode(image, fmt)
    for rel, blob in files.items():
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        with open(os.path.join(root, rel), "wb") as f:
            f.write(blob)
    return files


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("mydata")
    files = make_tree(str(root))
    return str(root), files


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_folder_splits_counts_and_names(tree, data_dir):
    root, _ = tree
    train_split, test_split, *_ = data.load_dataset(
        "folder", data_dir=data_dir, archive=root, in_memory="no"
    )
    assert isinstance(train_split, data.RecordSplit)
    assert train_split.class_names == CLASSES
    np.testing.assert_array_equal(train_split.class_counts(), TRAIN_COUNTS)
    np.testing.assert_array_equal(test_split.class_counts(), TEST_COUNTS)
    assert train_split.image_shape == (32, 32, 3)  # auto: the typical shorter side
    groups = data.shot_groups(train_split.class_counts(), many=20, few=10)
    np.testing.assert_array_equal(groups, [0, 1, 2])
    # In RAM: same labels, images resized + centre-cropped to image_size.
    mem_train, mem_test, *_ = data.load_dataset(
        "folder", data_dir=data_dir, archive=root, in_memory="yes", image_size=16
    )
    assert isinstance(mem_train, data.ArraySplit) and mem_train.images.shape[1:] == (16, 16, 3)
    np.testing.assert_array_equal(mem_train.labels, train_split.labels)
    assert len(mem_test) == sum(TEST_COUNTS)


def test_zip_with_wrapping_folder_matches_tree(tree, tmp_path):
    _, files = tree
    archive = tmp_path / "mydata.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for rel, blob in files.items():
            zf.writestr(f"mydata/{rel}", blob)
    train_split, _, *_ = data.load_dataset(
        "folder", data_dir=str(tmp_path / "tfds"), archive=str(archive), in_memory="no"
    )
    np.testing.assert_array_equal(train_split.class_counts(), TRAIN_COUNTS)


def test_corrupt_images_are_named_and_nothing_is_written(tree, tmp_path):
    root = str(tmp_path / "bad")
    make_tree(root)
    truncated = _encode(np.zeros((32, 32, 3), np.uint8), "JPEG")[:40]
    for rel, blob in (("train/cat/bad.jpg", truncated), ("test/dog/empty.png", b"")):
        with open(os.path.join(root, rel), "wb") as f:
            f.write(blob)
    dd = str(tmp_path / "tfds")
    with pytest.raises(ValueError, match="2 of .* cannot be decoded") as err:
        data.load_dataset("folder", data_dir=dd, archive=root, in_memory="no")
    assert "train/cat/bad.jpg" in str(err.value) and "test/dog/empty.png" in str(err.value)
    assert "on_corrupt=skip" in str(err.value)
    written = [f for _, _, fs in os.walk(dd) for f in fs if not f.endswith(".lock")]
    assert written == []  # no half-written dataset left behind
    train_split, test_split, *_ = data.load_dataset(
        "folder", data_dir=dd, archive=root, in_memory="no", on_corrupt="skip"
    )
    np.testing.assert_array_equal(train_split.class_counts(), TRAIN_COUNTS)
    assert len(test_split) == sum(TEST_COUNTS)
    info_dir = tfds.builder_from_directory(train_split.source.dataset_info.data_dir)
    assert set(info_dir.info.metadata["skipped"]) == {"train/cat/bad.jpg", "test/dog/empty.png"}


@pytest.mark.parametrize(
    "files, message",
    [
        ({"cat/001.jpg": b""}, "not at <split>/<class>/<image>"),
        ({"test/cat/001.jpg": b""}, "no 'train' folder"),
        ({"train/cat/1.jpg": b"", "test/owl/1.jpg": b""}, "missing from train"),
    ],
)
def test_layout_errors_say_what_to_fix(files, message):
    with pytest.raises(ValueError, match=message):
        image_index.folder_index(sorted(files))


def _touch_tree(root, files, folders=()):
    for rel in files:
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        open(os.path.join(root, rel), "wb").close()
    for rel in folders:
        os.makedirs(os.path.join(root, rel), exist_ok=True)


@pytest.mark.parametrize("wrapped", [False, True])
def test_empty_class_folders_under_train_are_named_before_any_data(tmp_path, wrapped):
    """docs/own_data.md: a class without training images stops the run, naming it; an empty
    folder used to vanish from the index (and with test images, to give a traceback)."""
    top = "mydata/" if wrapped else ""
    files = [f"{top}train/cat/1.jpg", f"{top}test/cat/1.jpg", f"{top}test/owl/1.jpg"]
    root = tmp_path / "tree"
    _touch_tree(root, files, [f"{top}train/owl", f"{top}train/yak"])
    (root / top / "train" / "yak" / "notes.txt").write_text("no image here")
    archive = tmp_path / "tree.zip"
    with zipfile.ZipFile(archive, "w") as zf:  # zip -r stores folder entries too
        for path in sorted(root.rglob("*")):
            zf.write(path, path.relative_to(root).as_posix() + ("/" if path.is_dir() else ""))
    for source in (root, archive):
        config = tiny_config(**{"data.name": "folder", "data.root": str(source)})
        with pytest.raises(errors.UserError) as error:
            checks.check_run_paths(config)  # before the lock, run.log or any decoding
        assert "2 class folder(s) under train/ hold no images: ['owl', 'yak']" in str(error.value)
    shutil.rmtree(root / top / "train" / "owl")  # test/owl without any train/owl folder
    shutil.rmtree(root / top / "train" / "yak")
    config = tiny_config(**{"data.name": "folder", "data.root": str(root)})
    with pytest.raises(errors.UserError, match=r"'test' has class folders missing from train"):
        checks.check_run_paths(config)
        store = image_index.ImageStore(str(source))
        with pytest.raises(errors.UserError, match="hold no images"):  # the loading path too
            image_index.folder_index(store.list_files(), store.list_dirs())


def test_a_batch_larger_than_the_folder_is_refused_before_any_data(tmp_path):
    files = [f"{split}/{c}/{i}.png" for split in ("train", "test") for c in "ab" for i in range(3)]
    _touch_tree(tmp_path, files)
    config = tiny_config(**{"data.name": "folder", "data.root": str(tmp_path)})  # batch 32
    with pytest.raises(errors.UserError) as error:
        checks.check_run_paths(config)
    assert f"config.batch_size=32 exceeds the 6 training images under {tmp_path}/train" in str(
        error.value
    )


def test_missing_root_names_the_field():
    with pytest.raises(ValueError, match="--config.data.root"):
        data.load_dataset("folder", archive=None)
    with pytest.raises(UserError, match="does not exist"):
        data.load_dataset("folder", archive="/no/such/tree")


def test_record_pipeline_is_process_count_invariant_and_resumes(tree, data_dir):
    root, _ = tree
    split, test_split, *_ = data.load_dataset(
        "folder", data_dir=data_dir, archive=root, in_memory="no", image_size=24
    )
    kwargs = dict(global_batch_size=12, sampler="cbd_stream", seed=3, num_epochs=2)
    it, steps = data.make_train_iterator(split, augment="imagenet", **kwargs)
    assert steps == len(split) // 12
    first = next(it)
    assert first["image"].shape == (12, 24, 24, 3) and first["image"].dtype == np.uint8
    state = it.get_state()
    second = next(it)
    it.set_state(state)
    np.testing.assert_array_equal(next(it)["image"], second["image"])
    for count in (2, 3):
        parts = [
            next(
                data.make_train_iterator(
                    split, augment="imagenet", process_index=p, process_count=count, **kwargs
                )[0]
            )
            for p in range(count)
        ]
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([b[key] for b in parts]), first[key])
    batches = list(data.eval_batches(test_split, batch_size=4))
    assert sum(int(b["mask"].sum()) for b in batches) == len(test_split)
    assert batches[0]["image"].shape == (4, 24, 24, 3)


def _folder_config(root, data_dir, method="ce"):
    import importlib.util

    name = "ce_folder" if method == "ce" else "bkd_folder"
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config(f"root={root},model=resnet8,augment=cifar,epochs=2")
    c.data.data_dir = data_dir
    c.data.many_threshold, c.data.few_threshold = 20, 10
    c.teacher.num_epochs = 1
    c.batch_size = 16
    c.eval_batch_size = 8
    c.max_steps_per_epoch = 2
    c.log_every_steps = 1
    c.optim.warmup_epochs = 0
    c.progress_bar = False
    return c


@pytest.mark.slow
def test_teacher_then_bkd_student_train_on_a_folder(tree, data_dir, tmp_path):
    root, _ = tree
    config = _folder_config(root, data_dir, "bkd")
    assert config.data.archive == root  # data.root is an alias of data.archive
    workdir = tmp_path / "bkd"
    summary = job.run(config, str(workdir))
    final = summary["final"]
    assert final["num_examples"] == sum(TEST_COUNTS)  # every test image counted once
    # The run's task: the folder's classes and training counts, groups by those counts.
    task = json.loads((workdir / "task.json").read_text())
    assert task["class_names"] == list(CLASSES)
    assert task["class_counts"] == list(TRAIN_COUNTS)
    assert task["class_groups"] == [0, 1, 2]  # 24 > 20 many, 12 medium, 6 < 10 few
    # The summary is its per-class accuracies on the uneven test split: one class a group.
    acc = final["per_class_acc"]
    assert [final["many"], final["medium"], final["few"]] == acc
    assert final["mean_class_acc"] == pytest.approx(np.mean(acc))
    top1 = np.dot(acc, TEST_COUNTS) / sum(TEST_COUNTS)  # images, not classes, weighted
    assert final["top1"] == pytest.approx(top1, abs=1e-6)
    # Each accuracy is a whole number of that class's test images.
    for a, n in zip(acc, TEST_COUNTS, strict=True):
        assert a * n == pytest.approx(round(a * n), abs=1e-6)
    # The student learnt from the teacher trained first in WORKDIR/teacher: a KD term.
    records = read_jsonl(str(workdir / "metrics.jsonl"))
    assert all(r["loss_kd"] > 0 for r in records if r["split"] == "train")
    teacher_task = json.loads((workdir / "teacher" / "task.json").read_text())
    assert teacher_task["class_counts"] == list(TRAIN_COUNTS)
