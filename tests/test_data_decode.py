"""Decoding and cropping cannot fail on a valid image: any size, aspect, odd sides, target."""

import io

import numpy as np
import pytest
from PIL import Image

from ltkd_jax.data import augment
from ltkd_jax.data.pipeline import EvalTransform, TrainTransform


def _encode(width: int, height: int, fmt: str, seed: int = 0) -> bytes:
    """A smooth RGB image (cheap to encode at 2000 px) as JPEG or PNG bytes."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    image = (x * rng.random(3) + y * rng.random(3)) % 256
    buf = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def _check(out: np.ndarray, size: int) -> None:
    assert out.shape == (size, size, 3) and out.dtype == np.uint8


def test_center_crop_of_odd_jpeg_at_small_size():
    # 95x96 at size 32: the reduced (draft) decode is 48x48, and a rescale taken from the
    # width alone put the crop's bottom past row 48 ("box can't exceed original image size").
    for w, h in ((95, 96), (96, 95), (97, 33)):
        for fraction in (1.0, augment.CENTER_CROP_FRACTION):
            _check(augment.resize_center_crop(_encode(w, h, "JPEG"), 32, fraction), 32)


@pytest.mark.parametrize("width,height", [(1001, 750), (999, 666), (801, 600)])
def test_random_resized_crop_of_odd_jpeg_at_224(width, height):
    # These failed 5-7 times in 300 draws before the per-axis mapping.
    image = _encode(width, height, "JPEG")
    rng = np.random.default_rng(0)
    for _ in range(300):
        _check(augment.random_resized_crop_flip(image, rng, 224), 224)


def test_decoded_region_stays_inside_the_decoded_image():
    # Box in original pixels of a 1001x750 JPEG decoded at 501x375 (draft 1/2, sides rounded up).
    x0, y0, x1, y1 = augment.decoded_region((500, 400, 501, 350), (1001, 750), (501, 375))
    assert 0 <= x0 < x1 <= 501 and 0 <= y0 < y1 <= 375
    assert y1 == pytest.approx(375.0)


def test_every_augmentation_on_random_sizes_both_paths():
    """Property test: random sides in [17, 2000], random targets, both input paths.

    Per example (a record split): TrainTransform / EvalTransform on the encoded bytes. In RAM:
    the image is first resized + centre-cropped to the target (as `records.decode_to_array`),
    then the same transforms run on the array.
    """
    rng = np.random.default_rng(13)
    kinds = augment.AUGMENTS
    for case in range(24):
        width, height = (int(v) for v in rng.integers(17, 2001, size=2))
        if case % 3 == 0:  # also very elongated images
            height = int(rng.integers(17, 40))
        size = int(rng.choice([8, 16, 32, 33, 64, 66, 97, 224]))
        encoded = _encode(width, height, "JPEG" if case % 4 else "PNG", seed=case)
        in_ram = augment.resize_center_crop(encoded, size, 1.0)
        _check(in_ram, size)
        _check(EvalTransform(size, resize=True)(encoded), size)
        for kind in kinds:
            for resize, image in ((True, encoded), (False, in_ram)):
                transform = TrainTransform(kind, size, 0.08, resize, color_jitter=case % 2 == 0)
                for _ in range(3):
                    _check(transform(image, rng), size)
