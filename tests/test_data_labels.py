"""Every image keeps its own label on the record path (per-example reads, `RecordSplit`).

Each image is one flat colour that encodes its label (red), its split (blue) and its
number within the class (green), written as lossless PNG, so a batch can be checked pixel
against label after decoding, resizing and cropping. Three sources: a user's class folders
and OLTR-style list files (both prepared into ArrayRecord by the TF-free builder), and a
`RecordSplit` over a bare random-access source whose record ids are a permutation.
Training batches are read as 2 processes would read them (process_index / process_count).
"""

import io
import os

import numpy as np
import pytest
from PIL import Image

from ltkd_jax import data

TRAIN_COUNTS = (9, 5, 2)  # long-tailed already
TEST_COUNTS = (2, 2, 2)
SPLIT_CODE = {"train": 0, "test": 255}  # blue channel
SIZE = 16
PROCESSES = 2
BATCH = 4  # global; each of the 2 processes reads 2 images of every batch


def encode_png(label: int, number: int, split: str) -> bytes:
    pixel = (20 * label + 10, 10 * number, SPLIT_CODE[split])
    # A non-square image: resizing and centre-cropping keep a flat colour flat.
    image = np.broadcast_to(np.array(pixel, np.uint8), (SIZE + 4, SIZE, 3))
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return buf.getvalue()


def label_of(images: np.ndarray) -> np.ndarray:
    """The label each image encodes, read from its centre pixel (crops pad at the border)."""
    red = images[:, SIZE // 2, SIZE // 2, 0].astype(np.int64)
    assert ((red - 10) % 20 == 0).all(), red  # a flat colour that was written, not a mix
    return (red - 10) // 20


def split_of(images: np.ndarray) -> np.ndarray:
    return images[:, SIZE // 2, SIZE // 2, 2]


def write(root, rel: str, blob: bytes) -> None:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(blob)


def folder_splits(tmp_path_factory):
    """<split>/<class>/<image>: class ids are the sorted folder names."""
    root = tmp_path_factory.mktemp("folder")
    for split, counts in (("train", TRAIN_COUNTS), ("test", TEST_COUNTS)):
        for label, n in enumerate(counts):
            for i in range(n):
                write(root, f"{split}/class_{label}/{i:02d}.png", encode_png(label, i, split))
    train, test, *_ = data.load_dataset(
        "folder",
        data_dir=str(tmp_path_factory.mktemp("tfds")),
        archive=str(root),
        image_size=SIZE,
        in_memory="no",
    )
    return train, test


def list_file_splits(tmp_path_factory):
    """ImageNet-LT lists: the label is the list's, unrelated to the folder names' order."""
    root, lists = tmp_path_factory.mktemp("imagenet"), tmp_path_factory.mktemp("lists")
    folder_of = {0: "n09", 1: "n01", 2: "n05"}  # sorted folders would give 1, 2, 0
    counts = {"train": TRAIN_COUNTS, "val": (1, 1, 1), "test": TEST_COUNTS}
    for split, per_class in counts.items():
        lines = []
        for label, n in enumerate(per_class):
            for i in range(n):
                rel = f"{split}/{folder_of[label]}/{i:02d}.png"
                write(root, rel, encode_png(label, i, "train" if split == "train" else "test"))
                lines.append(f"{rel} {label}")
        (lists / f"ImageNet_LT_{split}.txt").write_text("\n".join(lines[::-1]) + "\n")
    train, test, *_ = data.load_dataset(
        "imagenet_lt",
        data_dir=str(tmp_path_factory.mktemp("tfds")),
        archive=str(root),
        list_dir=str(lists),
        image_size=SIZE,
        in_memory="no",
    )
    return train, test


def permuted_record_splits(tmp_path_factory):
    """`source[record_ids[i]]` is example i; the ids are a permutation of the source order."""
    del tmp_path_factory

    def split_of_counts(split, counts, seed):
        rows = [
            {"image": encode_png(label, i, split), "label": label}
            for label, n in enumerate(counts)
            for i in range(n)
        ]
        order = np.random.default_rng(seed).permutation(len(rows))
        source = [rows[k] for k in order]  # stored shuffled
        ids = np.argsort(order)  # example i (label order) is at source[ids[i]]
        labels = np.array([rows[i]["label"] for i in range(len(rows))], np.int32)
        return data.RecordSplit(source, ids, labels, len(counts), image_size=SIZE)

    return split_of_counts("train", TRAIN_COUNTS, 0), split_of_counts("test", TEST_COUNTS, 1)


SOURCES = {
    "folder": folder_splits,
    "list_files": list_file_splits,
    "permuted_records": permuted_record_splits,
}


@pytest.fixture(scope="module", params=list(SOURCES))
def splits(request, tmp_path_factory):
    train, test = SOURCES[request.param](tmp_path_factory)
    assert isinstance(train, data.RecordSplit) and isinstance(test, data.RecordSplit)
    np.testing.assert_array_equal(train.class_counts()[:3], TRAIN_COUNTS)
    return train, test


def process_batches(split, process_index: int, augment: str) -> list[dict]:
    it, steps = data.make_train_iterator(
        split,
        global_batch_size=BATCH,
        sampler="instance",  # a shuffled epoch: stream positions are not dataset indices
        seed=0,
        num_epochs=2,
        augment=augment,
        process_index=process_index,
        process_count=PROCESSES,
    )
    return [next(it) for _ in range(2 * steps)]


@pytest.mark.parametrize("augment", ["none", "imagenet"])
def test_every_training_image_comes_with_its_own_label(splits, augment):
    train, _ = splits
    per_process = [process_batches(train, p, augment) for p in range(PROCESSES)]
    seen = []
    for batches in per_process:
        for batch in batches:
            assert len(batch["label"]) == BATCH // PROCESSES
            np.testing.assert_array_equal(label_of(batch["image"]), batch["label"])
            assert (split_of(batch["image"]) == SPLIT_CODE["train"]).all()
            seen.append(batch["label"])
    # The processes read different images: together each epoch draws every class.
    assert set(np.concatenate(seen)) == {0, 1, 2}


def test_every_test_image_comes_with_its_own_label_once(splits):
    _, test = splits
    labels = []
    for p in range(PROCESSES):
        for batch in data.eval_batches(
            test, batch_size=BATCH, process_index=p, process_count=PROCESSES
        ):
            real = batch["mask"]
            np.testing.assert_array_equal(label_of(batch["image"][real]), batch["label"][real])
            assert (split_of(batch["image"][real]) == SPLIT_CODE["test"]).all()
            labels.append(batch["label"][real])
    np.testing.assert_array_equal(np.bincount(np.concatenate(labels)), TEST_COUNTS)
