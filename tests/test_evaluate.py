"""`ltkd_jax.evaluate` and the report written after training."""

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from deploy_helpers import digits_test_folder, final_test_record, tiny_run

from ltkd_jax.deploy import evaluate, inference
from ltkd_jax.runs import job

GROUPS = ("top1", "many", "medium", "few")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("digits_eval") / "digits")
    digits_test_folder(root)
    return root


def test_report_written_after_training(workdir):
    """job.run writes WORKDIR/report/ (the trainer's own numbers) and the metadata files."""
    report = json.load(open(os.path.join(workdir, "report", "report.json")))
    final = final_test_record(workdir)
    for key in GROUPS:
        assert report["overall"][key] == final[key]
    for name in ("per_class.png", "confusion.png"):
        assert os.path.getsize(os.path.join(workdir, "report", name)) > 1000
    labels = json.load(open(os.path.join(workdir, inference.LABELS_FILE)))
    assert labels["class_names"] == [str(c) for c in range(10)]
    prep = json.load(open(os.path.join(workdir, inference.PREPROCESS_FILE)))
    assert prep["input_shape"] == [8, 8, 1] and prep["crop_fraction"] == 1.0


def test_evaluate_reproduces_the_trainer(workdir, folder, tmp_path):
    result = evaluate.evaluate_folder(workdir, folder, str(tmp_path / "out"))
    final = final_test_record(workdir)
    for key in GROUPS:  # exactly: same pixels, same compiled forward pass, same count sums
        assert result["overall"][key] == final[key], key
    confusion = np.asarray(result["confusion_matrix"])
    assert confusion.sum() == final["num_examples"]
    per_class = result["per_class"]
    np.testing.assert_allclose(
        [c["recall"] for c in per_class], np.diag(confusion) / confusion.sum(1), rtol=1e-6
    )
    precision = [c["precision"] for c in per_class]
    expected = np.diag(confusion) / np.maximum(confusion.sum(0), 1)
    for p, e, n in zip(precision, expected, confusion.sum(0), strict=True):
        assert (p is None) if n == 0 else p == pytest.approx(e, rel=1e-6)
    assert [c["train_count"] for c in per_class] == json.load(
        open(os.path.join(workdir, "task.json"))
    )["class_counts"]
    for name in ("report.json", "per_class.png", "confusion.png"):
        assert os.path.exists(tmp_path / "out" / name)


def test_evaluate_zip_with_a_wrapping_folder_and_a_corrupt_file(workdir, folder, tmp_path):
    archive = tmp_path / "digits.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for cls in ("3", "7"):
            for name in sorted(os.listdir(os.path.join(folder, cls)))[:5]:
                zf.write(os.path.join(folder, cls, name), f"wrap/{cls}/{name}")
        for cls in sorted(set(os.listdir(folder)) - {"3", "7"}):
            name = sorted(os.listdir(os.path.join(folder, cls)))[0]
            zf.write(os.path.join(folder, cls, name), f"wrap/{cls}/{name}")
        zf.writestr("wrap/3/broken.png", b"\x89PNG\r\n\x1a\n garbage")
    result = evaluate.evaluate_folder(workdir, str(archive), str(tmp_path / "out"))
    assert result["overall"]["num_examples"] == 18
    assert list(result["skipped"]) == [f"{archive}/wrap/3/broken.png"]
    counts = {c["class"]: c["test_count"] for c in result["per_class"]}
    assert counts["3"] == counts["7"] == 5 and counts["0"] == 1


def test_class_name_mismatch_is_a_clear_error(workdir, folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    os.rename(bad / "9", bad / "nine")
    with pytest.raises(ValueError, match=r"does not know: \['nine'\].*have no folder: \['9'\]"):
        evaluate.evaluate_folder(workdir, str(bad))
    shutil.rmtree(bad / "nine")
    with pytest.raises(ValueError, match=r"have no folder: \['9'\]"):
        evaluate.evaluate_folder(workdir, str(bad))


def test_cli_reports_mismatch_without_traceback(workdir, tmp_path, capsys):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(b"")
    assert evaluate.main(["--workdir", workdir, "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'cat'" in err and "Traceback" not in err


@pytest.mark.slow  # two trainings on a prepared folder: ~25 s on 2 cores
@pytest.mark.parametrize("in_memory", ["yes", "no"])  # resized once (crop 1) / per read (0.875)
@pytest.mark.slow
def test_evaluate_reproduces_a_folder_run(tmp_path, in_memory):
    """A run trained on a user's folder (JPEG, PNG, grayscale, RGBA, uneven sizes): its test/
    folder through `evaluate` gives the trainer's numbers exactly."""
    from test_data_folder import make_tree  # noqa: PLC0415

    from ltkd_jax.config import defaults

    root = str(tmp_path / "mydata")
    make_tree(root)
    c = defaults.base_config()
    c.data.name, c.data.root, c.data.data_dir = "folder", root, str(tmp_path / "tfds")
    c.data.in_memory, c.data.imbalance_factor, c.data.augment = in_memory, 1.0, "none"
    c.data.many_threshold, c.data.few_threshold = 20, 10
    c.model.name, c.num_epochs, c.batch_size, c.eval_batch_size = "resnet8", 1, 16, 8
    c.max_steps_per_epoch, c.optim.warmup_epochs, c.progress_bar = 2, 0, False
    workdir = str(tmp_path / "run")
    job.run(defaults.lock(c), workdir)
    if in_memory == "no":  # an older run: labels and preprocessing derived from the dataset
        os.remove(os.path.join(workdir, inference.LABELS_FILE))
        os.remove(os.path.join(workdir, inference.PREPROCESS_FILE))
    result = evaluate.evaluate_folder(workdir, os.path.join(root, "test"), str(tmp_path / "o"))
    final = final_test_record(workdir)
    assert result["overall"]["num_examples"] == final["num_examples"] == 12
    for key in (*GROUPS, "top5", "nll"):
        assert result["overall"][key] == final[key], key
    expected = 1.0 if in_memory == "yes" else 0.875
    assert inference.load_run(workdir).preprocess.crop_fraction == expected
