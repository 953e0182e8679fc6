"""Colour jitter + grayscale (docs/data.md#colour-jitter): the op, its pipeline threading,
teacher configs."""

import importlib.util
import pathlib

import numpy as np
import pytest

from ltkd_jax.config import checks, defaults
from ltkd_jax.data import ArraySplit, augment, make_train_iterator
from ltkd_jax.runs import teachers as teacher_stage

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def images(n=16, hw=8, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, hw, hw, c), dtype=np.uint8)


def fixed_params(n, factors=(1.0, 1.0, 1.0), hue=0.0, gray=False, jitter=True):
    return augment.ColorParams(
        jitter=np.full(n, jitter),
        factors=np.tile(np.asarray(factors, np.float32), (n, 1)),
        hue=np.full(n, hue, np.float32),
        order=np.tile(np.arange(4), (n, 1)),
        gray=np.full(n, gray),
    )


def test_dtype_shape_range_and_some_images_change():
    x = images(64)
    y = augment.random_color_augment(x, np.random.default_rng(0))
    assert y.dtype == np.uint8 and y.shape == x.shape
    changed = np.any(y != x, axis=(1, 2, 3))
    assert 0.6 < changed.mean() <= 1.0  # p(jitter or grey) = 1 - 0.2 * 0.8 = 0.84
    assert x.flags.writeable and np.array_equal(x, images(64))  # the input is not modified


def test_zero_probabilities_leave_images_unchanged():
    x = images()
    y = augment.random_color_augment(x, np.random.default_rng(1), jitter_p=0.0, gray_p=0.0)
    np.testing.assert_array_equal(y, x)


def test_grayscale_has_equal_channels_with_601_luma():
    x = images()
    y = augment.random_color_augment(x, np.random.default_rng(2), jitter_p=0.0, gray_p=1.0)
    np.testing.assert_array_equal(y[..., 0], y[..., 1])
    np.testing.assert_array_equal(y[..., 0], y[..., 2])
    luma = x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(y[..., 0], luma, atol=0.51)


@pytest.mark.parametrize("factor", [0.2, 0.7, 1.5, 1.8])
def test_brightness_only_scales_and_clips(factor):
    x = images()
    y = augment.color_augment(x, fixed_params(len(x), (factor, 1.0, 1.0)))
    want = np.clip(np.rint(x.astype(np.float64) * factor), 0, 255)
    np.testing.assert_allclose(y, want, atol=1)


def test_contrast_saturation_and_hue_endpoints():
    x = images()
    flat = augment.color_augment(x, fixed_params(len(x), (1.0, 0.0, 1.0)))
    mean = (x.astype(np.float64) @ [0.299, 0.587, 0.114]).mean(axis=(1, 2))
    np.testing.assert_allclose(flat, np.broadcast_to(mean[:, None, None, None], x.shape), atol=1)
    grey = augment.color_augment(x, fixed_params(len(x), (1.0, 1.0, 0.0)))
    assert np.abs(grey.astype(int) - grey[..., :1]).max() <= 1
    same = augment.color_augment(x, fixed_params(len(x)))  # identity factors, hue 0
    np.testing.assert_allclose(same, x, atol=1)
    red = np.zeros((1, 2, 2, 3), np.uint8)
    red[..., 0] = 255
    green = augment.color_augment(red, fixed_params(1, hue=1 / 3))
    np.testing.assert_array_equal(green[0, 0, 0], [0, 255, 0])


def test_single_channel_only_brightness_and_contrast():
    x = images(c=1)
    np.testing.assert_array_equal(
        augment.color_augment(x, fixed_params(len(x), (1.0, 1.0, 0.0), hue=0.2, gray=True)), x
    )
    y = augment.color_augment(x, fixed_params(len(x), (0.5, 1.0, 1.0)))
    np.testing.assert_allclose(y, np.rint(x * 0.5), atol=1)
    assert augment.random_color_augment(x, np.random.default_rng(0)).shape == x.shape
    with pytest.raises(ValueError, match="expected a batch"):
        augment.color_augment(images(c=2), fixed_params(16))


def test_deterministic_given_the_seed():
    x = images(32)
    a = augment.random_color_augment(x, np.random.default_rng(7))
    b = augment.random_color_augment(x, np.random.default_rng(7))
    c = augment.random_color_augment(x, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)


def small_split(n=96, hw=16):
    labels = np.arange(n, dtype=np.int32) % 4
    return ArraySplit(images(n, hw, seed=3), labels, 4)


def global_batches(split, process_count, steps=3, **kw):
    args = dict(global_batch_size=16, sampler="instance", seed=0, num_epochs=1)
    its = [
        make_train_iterator(split, **args, **kw, process_index=i, process_count=process_count)[0]
        for i in range(process_count)
    ]
    out = []
    for _ in range(steps):
        parts = [next(it) for it in its]
        out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return out


@pytest.mark.parametrize("augment_kind", ["cifar", "imagenet", "none"])
def test_one_and_two_processes_give_the_same_jittered_batch(augment_kind):
    split = small_split()
    one = global_batches(split, 1, augment=augment_kind, color_jitter=True)
    two = global_batches(split, 2, augment=augment_kind, color_jitter=True)
    plain = global_batches(split, 1, augment=augment_kind)
    for a, b, p in zip(one, two, plain, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["label"], p["label"])  # the sampler is unaffected
        assert np.any(a["image"] != p["image"])


def test_resume_with_color_jitter():
    split = small_split()
    args = dict(global_batch_size=16, sampler="instance", seed=0, num_epochs=2, color_jitter=True)
    it, _ = make_train_iterator(split, **args)
    next(it)
    state = it.get_state()
    want = [next(it)["image"] for _ in range(2)]
    it2, _ = make_train_iterator(split, **args)
    it2.set_state(state)
    for w in want:
        np.testing.assert_array_equal(next(it2)["image"], w)


def _load(name, arg=None):
    spec = importlib.util.spec_from_file_location("cfg_" + name, CONFIG_DIR / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def test_teacher_config_jitters_only_the_last_teachers():
    config = defaults.base_config()
    assert config.data.color_jitter is False and config.teacher.color_jitter_teachers == 0
    config.teacher.count, config.teacher.color_jitter_teachers = 3, 1
    flags = [teacher_stage.teacher_config(config, k).data.color_jitter for k in range(3)]
    assert flags == [False, False, True]
    config.teacher.color_jitter_teachers = 0
    assert not any(teacher_stage.teacher_config(config, k).data.color_jitter for k in range(3))

    ens = _load("cbd_large_scale", "teachers=4")
    assert (ens.teacher.count, ens.teacher.color_jitter_teachers) == (4, 2)
    teachers = [teacher_stage.teacher_config(ens, k) for k in range(4)]
    assert [t.data.color_jitter for t in teachers] == [False, False, True, True]
    assert [t.seed for t in teachers] == [1000, 2000, 3000, 4000]  # never the student's 0
    assert ens.data.color_jitter is False  # the student trains without it
    assert _load("cbd_cifar", "teachers=4").teacher.color_jitter_teachers == 2
    assert _load("cbd_cifar", "teachers=2").teacher.color_jitter_teachers == 1
    assert _load("cbd_cifar").teacher.color_jitter_teachers == 0
    assert _load("cbd_large_scale").teacher.color_jitter_teachers == 0


def test_validate_rejects_too_many_jitter_teachers():
    config = defaults.base_config()
    config.teacher.color_jitter_teachers = 2
    with pytest.raises(ValueError, match="color_jitter_teachers"):
        checks.validate_config(config)
