"""A new user's path (issue 24): what the README promises, on a small generated folder.

Fast checks of each promise, then (slow) `scripts/user_path.sh`, which walks the README's
commands in order on the quick-start data and on a generated long-tailed folder.
"""

import json
import logging
import os
import subprocess

import numpy as np
import pytest
from absl import flags
from conftest import REPO_ROOT
from ml_collections import config_flags
from test_data_own import _array_split, _jpeg, folder_config, write_tree

from ltkd_jax import cli, data
from ltkd_jax.config import checks, defaults, recipes
from ltkd_jax.data import sources
from ltkd_jax.data import task as task_lib
from ltkd_jax.deploy import evaluate, export, predict, report
from ltkd_jax.errors import UserError
from ltkd_jax.runs import job, rundir
from ltkd_jax.training import optim, progress, trainer

# A long tail the CIFAR thresholds (many > 100, few < 20) leave without a few group; a 10%
# holdout pushes the smallest class (21) below 20: the 6 / 93 / 2 case in small.
TAIL = {f"c{i:02d}": int(round(534 * (21 / 534) ** (i / 11))) for i in range(12)}


# ---- Wrong or lost results -------------------------------------------------------------------


def _finished_run(workdir, fingerprint: str) -> None:
    """What check_resume_data reads of a finished run: task.json and a checkpoint folder."""
    os.makedirs(os.path.join(workdir, "checkpoints", "6"))
    with open(os.path.join(workdir, "task.json"), "w") as f:
        json.dump({"data_fingerprint": fingerprint, "num_classes": 2}, f)


def test_a_finished_run_refuses_changed_data_before_anything_is_written(tmp_path, capfd):
    root, workdir = str(tmp_path / "data"), str(tmp_path / "run")
    write_tree(root, (("train", {"ant": 5, "bee": 5}), ("test", {"ant": 1, "bee": 1})))
    config = folder_config(root, str(tmp_path / "tfds"), batch_size=8)
    before = data.source_fingerprint(config.data)
    # The listing's fingerprint is the one preparation records (and refuses teachers by).
    assert data.prepared_splits(config.data).train.fingerprint == before
    assert capfd.readouterr().out == ""  # no tfds banner on stdout
    _finished_run(workdir, before)
    job.check_resume(config, workdir)  # the same data: accepted
    with open(os.path.join(root, "train", "ant", "new.jpg"), "wb") as f:
        f.write(_jpeg(40, 40, 0, 5))
    saved = open(os.path.join(workdir, "task.json")).read()
    task_lib._cached_splits.cache_clear()  # a process prepares a dataset once; this one changed
    for refuse in (job.check_resume, trainer.train_and_evaluate):
        with pytest.raises(rundir.WorkdirError) as error:  # the command line, the library
            refuse(config, workdir)
        message = str(error.value)
        assert f"data fingerprint {before[:12]}" in message and "new --workdir" in message
    assert open(os.path.join(workdir, "task.json")).read() == saved
    assert not os.path.exists(os.path.join(workdir, "config.json"))


def test_per_class_plot_draws_the_thresholds_task_json_grouped_by():
    task = {"shot_thresholds": {"many": 45, "few": 34, "derived": True, "rule": "derived"}}
    assert report.thresholds_of(task) == (34, 45)
    assert report.thresholds_of({}) is None  # a run older than the field: no lines
    rows = [
        {"class": f"c{i}", "train_count": n, "group": g, "accuracy": a}
        for i, (n, g, a) in enumerate([(60, "many", 0.99), (40, "medium", 0.95), (20, "few", 0.91)])
    ]
    overall = {"top1": 0.95, "mean_class_acc": 0.95, "many": 0.99, "medium": 0.95, "few": 0.91}
    fig = report.per_class_figure({"per_class": rows, "overall": overall}, (34, 45))
    ax = fig.axes[0]
    assert sorted(line.get_xdata()[0] for line in ax.get_lines()) == [34, 45]
    low, high = ax.get_ylim()
    assert 85 < low < 91 and 99 < high <= 102  # fitted to 91-99%, not 0-100
    assert "mean-class 95.0%" in ax.get_title() and "mean per-class accuracy" in ax.get_title()


def test_thresholds_tail33_is_none():
    task = {"shot_thresholds": {"many": 1, "few": 1, "derived": False, "rule": "tail33"}}
    assert report.thresholds_of(task) is None


def test_val_fraction_does_not_change_the_groups_and_the_log_names_the_rule(caplog):
    split = _array_split(list(TAIL.values()), list(TAIL))
    config = defaults.base_config()
    config.data.name, config.data.imbalance_factor = "folder", 1.0
    whole = task_lib.task_splits(sources.DataSplits(split, split), config.data)
    config.data.val_fraction = 0.1
    with caplog.at_level(logging.INFO, logger="absl"):
        held = task_lib.task_splits(sources.DataSplits(split, split), config.data)
    assert held.class_counts.min() < 20 <= whole.class_counts.min()  # the holdout's effect
    np.testing.assert_array_equal(held.class_groups, whole.class_groups)
    assert np.bincount(held.class_groups, minlength=3).tolist() == [4, 4, 4]
    assert held.info["shot_thresholds"] == whole.info["shot_thresholds"]
    assert held.info["shot_thresholds"]["rule"] == "derived"
    log = " ".join(r.getMessage() for r in caplog.records)
    assert "thresholds derived from the class counts" in log and "before the val holdout" in log


# ---- One line and exit 2 ---------------------------------------------------------------------


def _parse(argv):
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, flag_values=values)
    values(["prog", *argv])
    return holder


def test_a_config_argument_typo_shows_the_config_files_own_message():
    path = REPO_ROOT / "configs" / "ce_cifar.py"
    with pytest.raises(flags.IllegalFlagValueError) as error:
        _parse([f"--config={path}:datset=cifar10"])
    message = cli.flag_error_message(error.value, [])
    assert message.startswith(
        f"--config={path}:datset=cifar10: config argument 'datset' not understood"
    )
    assert "expected key=value with key one of ['dataset'" in message
    assert "\n" not in message


def test_a_config_file_that_does_not_exist_is_one_line_and_exit_2(capsys):
    holder = _parse(["--config=configs/nosuch.py"])
    with pytest.raises(SystemExit) as stop:
        cli.loaded_config(holder)
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert "No such file or directory: 'configs/nosuch.py'" in err and "configs/" in err


def test_data_errors_found_on_the_listing_come_before_decoding(tmp_path):
    root, tfds_dir = str(tmp_path / "data"), str(tmp_path / "tfds")
    write_tree(root, (("train", {"ant": 9, "bee": 2}), ("test", {"ant": 1, "bee": 1})))
    cut = folder_config(root, tfds_dir, **{"data.imbalance_factor": 100.0})
    with pytest.raises(UserError, match="already imbalanced .9 to 2.*imb=1"):
        data.load_task(cut.data)
    assert not os.path.exists(tfds_dir)  # refused on the file listing: nothing prepared
    write_tree(root, (("test", {"cat": 1}),))
    with pytest.raises(UserError, match=r"class folders missing from train: \['cat'\]"):
        data.load_task(folder_config(root, tfds_dir).data)


def test_corrupt_images_are_a_user_error_naming_them(tmp_path):
    root = str(tmp_path / "data")
    write_tree(root, (("train", {"ant": 2, "bee": 2}), ("test", {"ant": 1, "bee": 1})))
    with open(os.path.join(root, "train", "bee", "bad.jpg"), "wb") as f:
        f.write(b"not an image")
    with pytest.raises(UserError, match="(?s)1 of 7 images cannot be decoded.*bad.jpg.*on_corrupt"):
        data.load_task(folder_config(root, str(tmp_path / "tfds")).data)


def test_a_wrong_root_names_the_folder_field_and_a_wrong_zip_the_cifar_one():
    folder = folder_config("/no/such/mydata", "")
    with pytest.raises(UserError) as error:
        checks.validate_config(folder)
    assert "config.data.root='/no/such/mydata' does not exist" in str(error.value)
    assert "cifar" not in str(error.value) and "download" not in str(error.value)
    cifar = recipes.cifar_config("dataset=cifar10", "ce")
    cifar.data.archive = "/no/such.zip"
    with pytest.raises(UserError, match="the path of the cifar10 zip.*cifar10-jpeg.zip"):
        checks.validate_config(cifar)


def test_deploy_commands_exit_2_on_usage_errors_naming_their_own_flags(tmp_path, capsys):
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    assert evaluate.main(["--workdir", str(tmp_path), "--data", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --data=/nonexistent: ") and "config" not in err
    assert predict.main(["--workdir", "/no/run", str(image)]) == 2
    assert "error: " in capsys.readouterr().err
    assert export.main(["--workdir", "/no/run", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err


def test_reproduce_names_its_own_archive_flag():
    from test_reproduce import reproduce

    table = reproduce.tables.TABLES["cifar100_lt_if100_r32"]
    message = reproduce.missing_archive(table, "/no/such.zip")
    assert "--archive=/path/to/cifar100-png.zip" in message and "config.data" not in message
    assert reproduce.missing_archive(reproduce.tables.TABLES["digits_smoke"], "") is None


# ---- Documented commands ---------------------------------------------------------------------


def test_a_short_cosine_schedule_scales_its_warm_up_down(caplog):
    config = folder_config("/tmp", "", **{"num_epochs": 1, "optim.warmup_epochs": 5})
    checks.validate_config(config)  # no longer refused
    with caplog.at_level(logging.WARNING, logger="absl"):
        schedule = optim.make_schedule(config.optim, 10, 2)
    assert "warm-up is scaled down to 1 epoch" in caplog.text
    lrs = [float(schedule(s)) for s in (0, 10, 19)]
    assert lrs[0] == 0 and lrs[1] == pytest.approx(config.optim.lr) and lrs[2] < lrs[1]
    assert optim.cosine_warmup_epochs(5, 1) == 0 and optim.cosine_warmup_epochs(5, 6) == 5


def test_evaluate_reads_the_split_of_a_training_layout():
    files = ["mine/train/cat/1.png", "mine/test/cat/2.png", "mine/test/dog/3.png"]
    assert evaluate.class_tree(files) == [(files[1], "cat"), (files[2], "dog")]
    assert evaluate.class_tree(files, "train") == [(files[0], "cat")]
    assert evaluate.class_tree(["wrap/cat/1.png"]) == [("wrap/cat/1.png", "cat")]
    assert evaluate.class_tree(["test/cat/1.png"]) == [("test/cat/1.png", "cat")]
    with pytest.raises(UserError, match=r"splits \['test', 'train'\].*--split"):
        evaluate.class_tree(files, "val")


def test_auto_augmentation_is_cifar_for_small_images():
    assert recipes.folder_config("root=/x", "ce").data.augment == "auto"
    assert data.augment.resolve("auto", 64) == "cifar"
    assert data.augment.resolve("auto", 96) == "imagenet"
    assert data.augment.resolve("none", 32) == "none"


def test_the_folder_recipes_resnet_stem_pool_converts_to_onnx_exactly():
    """export's ONNX path on the folder recipe's default ResNet-10: its stem max-pool."""
    from flax import linen as nn

    from ltkd_jax.models import resnet

    x = np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32)
    reference = np.asarray(nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))))
    np.testing.assert_array_equal(np.asarray(resnet.stem_pool(x)), reference)  # same model
    if export.onnx_available():
        pytest.skip(export.onnx_available())
    import jax
    import onnxruntime
    from jax2onnx import to_onnx

    proto = to_onnx(resnet.stem_pool, inputs=[jax.ShapeDtypeStruct(x.shape, np.float32)])
    session = onnxruntime.InferenceSession(proto.SerializeToString())
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_array_equal(got, reference)


# ---- Noise and missing pieces ----------------------------------------------------------------


def test_time_estimates_say_seconds_under_a_minute():
    assert progress.duration(25.4) == "25 s" and progress.duration(420) == "7 min"
    assert progress.duration(3 * 3600 + 5 * 60) == "3 h 05 min"
    assert "about 25 s for the remaining 250 steps" in progress.time_estimate(0.1, 250)
    assert "estimate follows" in progress.compile_note(30.0, 7)


def test_predict_counts_the_files_it_leaves_out(tmp_path):
    (tmp_path / "cat").mkdir()
    for name in ("a.png", "notes.txt", ".DS_Store"):
        (tmp_path / "cat" / name).write_bytes(b"")
    others = predict.non_image_files([str(tmp_path)])
    assert sorted(os.path.basename(p) for p in others) == [".DS_Store", "notes.txt"]


def test_the_printout_says_once_what_the_groups_are():
    overall = {"top1": 0.968, "mean_class_acc": 0.967, "many": 0.988, "medium": 0.967}
    text = report.format_overall({"overall": {**overall, "few": 0.943, "num_examples": 599}})
    assert "mean-class 96.7%" in text and text.count("mean per-class accuracy") == 1


# ---- The whole path --------------------------------------------------------------------------


@pytest.mark.slow
def test_the_readme_path_runs_without_a_traceback_or_an_unexplained_warning(tmp_path):
    """scripts/user_path.sh: the README's commands in order (quick-start, report, predict,
    evaluate, export, a folder's smoke / teacher / student / compare runs, the changed-data
    refusal, the one-line errors); it fails on any traceback or unexpected warning."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "USER_PATH_QUICK": "1"}
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "user_path.sh"), str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "user path: every step passed" in out.stdout
