"""`ltkd_jax.predict`: the trainer's evaluation image for image, corrupt files skipped."""

import csv
import io
import os

import jax
import numpy as np
import pytest
from deploy_helpers import digits_test_folder, final_test_record, tiny_run
from PIL import Image

from ltkd_jax import data
from ltkd_jax.deploy import inference, predict
from ltkd_jax.runs import finished
from ltkd_jax.training import sharding


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tiny_run(tmp_path_factory)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("digits_png"))
    return (root, *digits_test_folder(root))


def trainer_predictions(workdir: str, images: np.ndarray) -> np.ndarray:
    """Argmax of the trainer's evaluation forward pass (finished.load, eval inputs)."""
    frozen = finished.load(workdir, mesh=sharding.make_mesh(1))
    config, shape = frozen.config, tuple(frozen.task["image_shape"])
    mean, std = data.input_stats(config.data, shape[-1])
    logits, _ = frozen.model.apply(frozen.variables, data.normalize(images, mean, std), train=False)
    return np.asarray(jax.device_get(logits)).argmax(-1)


def test_predict_agrees_with_trainer_evaluation(workdir, folder):
    root, paths, images, labels = folder
    run = inference.load_run(workdir)
    preds = list(predict.predict_files(run, inference.list_images([root]), top_k=3))
    by_path = {p.path: p for p in preds}
    assert len(by_path) == len(paths)
    top1 = np.asarray([run.class_names.index(by_path[p].classes[0]) for p in paths])
    np.testing.assert_array_equal(top1, trainer_predictions(workdir, images))
    # ... and therefore the trainer's top-1 on the same images (it sums counts in float32).
    record = final_test_record(workdir)
    assert np.sum(top1 == labels) == round(record["top1"] * record["num_examples"])
    p = preds[0]
    assert len(p.classes) == 3 and p.probs[0] >= p.probs[1] >= p.probs[2]
    assert 0 < sum(p.probs) <= 1 + 1e-6


def test_rgb_rgba_and_jpeg_inputs_are_converted(workdir, folder, tmp_path):
    """A colour-model-free digit saved as RGB / RGBA PNG gives the grayscale file's logits."""
    _, paths, images, _ = folder
    gray = images[0, ..., 0]
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgba = np.concatenate([rgb, np.full_like(gray, 255)[..., None]], axis=-1)
    files = {"gray.png": gray, "rgb.png": rgb, "rgba.png": rgba, "rgb.jpg": rgb}
    for name, array in files.items():
        Image.fromarray(array).save(tmp_path / name, quality=95)
    run = inference.load_run(workdir)
    got = {
        os.path.basename(p.path): p.logits
        for p in predict.predict_files(run, inference.list_images([str(tmp_path)]))
    }
    assert set(got) == set(files)
    np.testing.assert_array_equal(got["rgb.png"], got["gray.png"])
    np.testing.assert_array_equal(got["rgba.png"], got["gray.png"])
    assert np.all(np.isfinite(got["rgb.jpg"]))


def test_cli_skips_corrupt_files_and_writes_csv(workdir, folder, tmp_path, capsys):
    _, paths, _, _ = folder
    good = paths[:3]
    truncated = tmp_path / "truncated.png"
    data = open(good[0], "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    out = tmp_path / "preds.csv"
    args = [*good[:2], str(truncated), str(garbage), good[2], "--top_k=2"]
    assert predict.main([*args, "--workdir", workdir, "--output", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"skipped {truncated}" in captured.err and f"skipped {garbage}" in captured.err
    assert "3 images classified, 2 unreadable ones skipped" in captured.err
    rows = list(csv.reader(io.StringIO(out.read_text())))
    assert rows[0] == ["path", "class_1", "prob_1", "class_2", "prob_2"]
    assert [r[0] for r in rows[1:]] == good  # input order, corrupt files left out
    assert all(line.startswith(tuple(good)) for line in captured.out.strip().splitlines())
