"""A new user's own long-tailed image folder (issues 13 and 12.1): odd image sizes, a class
with 21 images, a natural tail, an imbalanced test split, val/, changed sources."""

import io
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from ltkd_jax import data, losses
from ltkd_jax.config import checks, defaults, recipes
from ltkd_jax.data import arrays, longtail, sources
from ltkd_jax.data import task as task_lib
from ltkd_jax.runs import finished, job
from ltkd_jax.runs.summary import format_summary, summarize_run
from ltkd_jax.training import metrics
from ltkd_jax.training.writers import read_jsonl

# A natural tail, as a user's data has it (one class has 21 images, none is empty).
GROUPS = ("many", "medium", "few")
TRAIN = {"ant": 40, "bee": 21, "cat": 9, "dog": 5, "emu": 3}
TEST = {"ant": 8, "bee": 4, "cat": 3, "dog": 2, "emu": 1}  # as imbalanced as train
VAL = {"ant": 2, "bee": 2, "cat": 1, "dog": 1, "emu": 1}
SIZES = ((95, 96), (96, 95), (71, 70), (67, 99))  # odd sides: the 32 px crash came from these


def _jpeg(width: int, height: int, colour: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width, 3)).astype(np.uint8)
    image[..., colour % 3] += 150
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG")
    return buf.getvalue()


def write_tree(root, splits=(("train", TRAIN), ("test", TEST)), seed=0) -> None:
    for split, counts in splits:
        for c, (name, n) in enumerate(counts.items()):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(n):
                w, h = SIZES[(i + c) % len(SIZES)]
                with open(os.path.join(root, split, name, f"{i:03d}.jpg"), "wb") as f:
                    f.write(_jpeg(w, h, c, seed + 1000 * c + i))


def folder_config(root, data_dir, **fields):
    c = recipes.folder_config(f"root={root},model=resnet8,size=32,epochs=1", "ce")
    c.data.data_dir = data_dir
    for key, value in fields.items():
        section, _, name = key.rpartition(".")
        (c[section] if section else c)[name] = value
    return defaults.lock(c)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("own"))
    write_tree(root, (("train", TRAIN), ("val", VAL), ("test", TEST)))
    return root


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


# ---- Data identity (issue 12, item 1) -------------------------------------------------------


def test_a_changed_folder_is_prepared_again_and_says_what_changed(tmp_path, caplog):
    root, data_dir = str(tmp_path / "data"), str(tmp_path / "tfds")
    write_tree(root, (("train", {"ant": 3, "bee": 3}), ("test", {"ant": 1, "bee": 1})))
    first = sources.load_dataset("folder", data_dir=data_dir, archive=root, in_memory="no")
    again = sources.load_dataset("folder", data_dir=data_dir, archive=root, in_memory="no")
    assert again.train.fingerprint == first.train.fingerprint  # unchanged: reused
    # Add a class that sorts first (every old label shifts) and repair (rewrite) an image.
    write_tree(root, (("train", {"aardvark": 2}), ("test", {"aardvark": 1})), seed=7)
    with open(os.path.join(root, "train", "bee", "000.jpg"), "wb") as f:
        f.write(_jpeg(50, 40, 1, 99))
    with caplog.at_level(logging.WARNING):
        changed = sources.load_dataset("folder", data_dir=data_dir, archive=root, in_memory="no")
    assert changed.train.fingerprint != first.train.fingerprint
    assert changed.train.class_names == ("aardvark", "ant", "bee")
    np.testing.assert_array_equal(changed.train.class_counts(), [2, 3, 3])
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "changed since it was prepared" in message
    assert "classes added ['aardvark']" in message and "1 images modified" in message
    assert "images relabelled" not in message  # labels follow the class names


def test_a_teacher_on_other_data_is_refused(tree, data_dir, tmp_path):
    config = folder_config(tree, data_dir)
    task = data.load_task(config.data)
    ours = task.train.fingerprint
    run_task = {"num_classes": 5, "image_shape": [32, 32, 3], "data_fingerprint": ours}
    finished.check_compatible("the teacher", "t", config, run_task, config, task)
    run_task["data_fingerprint"] = "0" * 40
    with pytest.raises(ValueError, match="its data .fingerprint 000000000000. differs"):
        finished.check_compatible("the teacher", "t", config, run_task, config, task)


def test_a_size_mismatch_names_the_size_fix(tree, data_dir):
    config = folder_config(tree, data_dir)
    run_task = {"num_classes": 5, "image_shape": [64, 64, 3]}
    task = data.load_task(config.data)
    with pytest.raises(ValueError, match=r"image_size=64 \(size=64 in the folder configs\)"):
        finished.check_compatible("the teacher", "t", config, run_task, config, task)


# ---- Long-tailed subsets that make sense (item 2) --------------------------------------------


def _array_split(counts, names=None):
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
    images = np.zeros((len(labels), 4, 4, 3), np.uint8)
    return arrays.ArraySplit(images, labels, len(counts), tuple(names or ()))


def test_imbalance_factor_on_an_already_long_tailed_split_is_refused():
    with pytest.raises(ValueError, match="already imbalanced .40 to 3.*imb=1"):
        longtail.make_longtail(_array_split(list(TRAIN.values())), 100)


def test_imbalance_factor_above_the_smallest_class_keeps_one_image_per_class():
    lt = longtail.make_longtail(_array_split([50] * 10), 100)  # int(50 / 100) = 0 for the tail
    counts = lt.class_counts()
    assert counts[0] == 50 and counts.min() == 1


def test_a_class_without_training_images_is_an_error_naming_it():
    with pytest.raises(ValueError, match=r"1 of 3 classes have no training images: \['cat'\]"):
        longtail.check_classes_present(_array_split([4, 2, 0], ["ant", "bee", "cat"]))


def test_class_weights_of_an_empty_class_are_finite():
    for weights in (losses.effective_number_weights, losses.inverse_frequency_weights):
        assert np.isfinite(np.asarray(weights(np.array([0, 21, 534])))).all()


# ---- Shot groups for any dataset, balanced metrics (items 3, 4) ------------------------------


def test_folder_shot_groups_are_derived_when_the_benchmark_thresholds_leave_one_empty():
    counts = np.array(list(TRAIN.values()))
    assert np.bincount(longtail.shot_groups(counts), minlength=3).tolist() == [0, 2, 3]
    many, few, derived = longtail.shot_thresholds(counts, 100, 20, derive=True)
    assert derived and np.bincount(longtail.shot_groups(counts, many, few), minlength=3).min() > 0
    # Benchmarks keep the literature's thresholds; equal counts cannot be split.
    assert longtail.shot_thresholds(counts, 100, 20, derive=False) == (100, 20, False)
    assert longtail.tercile_thresholds(np.array([7, 7, 7])) is None


def test_an_empty_group_is_none_and_mean_class_skips_absent_classes():
    counts = {
        "seen": np.array([10.0, 2.0, 0.0]),
        "correct": np.array([9.0, 0.0, 0.0]),
        "correct5": np.array([10.0, 2.0, 0.0]),
        "nll": np.float32(3.0),
    }
    out = metrics.summarize(counts, np.array([0, 1, 1]))
    assert out["few"] is None and out["per_class_acc"][2] is None
    assert out["mean_class_acc"] == pytest.approx(0.45)  # (0.9 + 0) / 2, not / 3
    assert out["top1"] == pytest.approx(0.75) and out["test_imbalance"] == 5.0
    assert "NaN" not in json.dumps(out)  # nothing for TensorBoard to warn about
    line = format_summary("bkd", {"final": {**out, "epoch": 1}, "best": {**out, "epoch": 1}})
    assert "mean-class  45.0%" in line and "few   n/a%" in line


# ---- Validation, class names, image size (items 5, 6, 8) ------------------------------------


def test_a_val_folder_is_loaded_and_selects_best(tree, data_dir):
    splits = sources.load_dataset("folder", data_dir=data_dir, archive=tree, in_memory="no")
    np.testing.assert_array_equal(splits.val.class_counts(), list(VAL.values()))
    np.testing.assert_array_equal(splits.test.class_counts(), list(TEST.values()))
    assert splits.train.image_shape == (64, 64, 3)  # median side 70-96 -> a multiple of 32
    t = task_lib.task_splits(splits, folder_config(tree, data_dir).data)
    assert t.info["selected_on"] == "val" and t.info["class_names"] == list(TRAIN)
    assert t.info["shot_thresholds"]["derived"] and t.info["data_fingerprint"]


def test_val_fraction_holds_out_a_stratified_part_of_train():
    split = _array_split(list(TRAIN.values()))
    kept, val = longtail.stratified_holdout(split, 0.2, seed=0)
    np.testing.assert_array_equal(val.class_counts(), [8, 4, 2, 1, 1])  # >= 1 per class
    np.testing.assert_array_equal(kept.class_counts() + val.class_counts(), split.class_counts())
    config = defaults.base_config()
    config.data.name, config.data.imbalance_factor, config.data.val_fraction = "folder", 1.0, 0.2
    t = task_lib.task_splits(sources.DataSplits(split, split), config.data)
    assert t.info["selected_on"] == "val (0.2 of train)" and len(t.val) == 16


def test_summarize_run_takes_best_on_val(tmp_path):
    def record(split, step, top1):
        return {"split": split, "step": step, "epoch": step, "top1": top1, **dict.fromkeys(GROUPS)}

    rows = [record("test", 1, 0.5), record("val", 1, 0.9), record("test", 2, 0.6)]
    rows.append(record("val", 2, 0.1))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = summarize_run(str(tmp_path))
    assert summary["best"]["step"] == 1 and summary["selected_on"] == "val"
    assert "chosen on val" in format_summary("ce", summary)


# ---- compare.py and configs on any dataset (item 7) -----------------------------------------


def test_every_distillation_method_has_a_folder_config(tmp_path):
    import importlib.util

    from conftest import REPO_ROOT

    spec = importlib.util.spec_from_file_location("folder", REPO_ROOT / "configs" / "folder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for method in ("kd", "bkd", "dkd", "dukd", "krdistill", "ltkd", "cbd"):
        c = module.get_config(f"method={method},root={tmp_path},size=64,epochs=10")
        assert (c.method, c.data.name, c.data.image_size, c.num_epochs) == (
            method,
            "folder",
            64,
            10,
        )
        if "drw_epoch" in c.loss:
            assert c.loss.drw_epoch == 8  # 160 of 200 epochs -> 8 of 10
        if method == "dkd":
            assert c.loss.warmup_epochs == 1  # 20 of 200 epochs -> 1 of 10
        checks.validate_config(c)


# ---- The first folder run, end to end (size=32 on odd JPEGs, read per example) --------------


@pytest.mark.slow
def test_a_one_epoch_folder_run_at_size_32_records_names_val_and_mean_class(
    tree, data_dir, tmp_path, capsys, caplog
):
    config = folder_config(
        tree,
        data_dir,
        **{
            "data.in_memory": "no",  # per example: the path that crashed mid-training
            "batch_size": 16,
            "eval_batch_size": 8,
            "max_steps_per_epoch": 3,
            "log_every_steps": 1,
            "progress_bar": False,
        },
    )
    workdir = tmp_path / "ce"
    with caplog.at_level(logging.INFO, logger="absl"):
        job.run(config, str(workdir))
    log = " ".join(r.getMessage() for r in caplog.records)
    assert "resnet8 at 32x32x3, 3 steps per epoch" in log and "ms per step" in log
    task = json.loads((workdir / "task.json").read_text())
    assert task["class_names"] == list(TRAIN) and task["selected_on"] == "val"
    assert task["image_shape"] == [32, 32, 3] and len(task["data_fingerprint"]) == 40
    assert task["shot_thresholds"]["derived"]
    splits = [r["split"] for r in read_jsonl(str(workdir / "metrics.jsonl"))]
    assert splits.count("val") == splits.count("test") == 1
    summary_line = capsys.readouterr().out
    assert "mean-class" in summary_line and "chosen on val" in summary_line

    from conftest import load_script

    compare = load_script("compare")
    run_config, run_task = finished.read_run_info(str(workdir))
    caption = compare.caption_for(run_config, run_task, "t", summarize_run(str(workdir)))
    assert "imbalanced test split" in caption and "chosen on val" in caption
    assert "balanced test split" not in caption.replace("imbalanced test split", "")

    # A post-hoc tau is chosen on val too: the best tau is the val argmax, test is reported.
    posthoc = recipes.with_method(config, "posthoc_la")
    posthoc.init.workdir = str(workdir)
    best = job.run(defaults.lock(posthoc), str(tmp_path / "la"))
    records = read_jsonl(str(tmp_path / "la" / "metrics.jsonl"))
    val_top1 = [r["top1"] for r in records if r["split"] == "val"]
    tests = [r for r in records if r["split"] == "test"]
    assert len(val_top1) == len(tests) == 21
    assert best["top1"] == tests[int(np.argmax(val_top1))]["top1"]
