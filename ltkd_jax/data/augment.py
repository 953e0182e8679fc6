"""Host-side augmentation and normalisation (docs/data.md#augmentation).

CIFAR: batch-vectorised pad-crop-flip on uint8 batches. ImageNet-style ('imagenet'): per-image
random-resized crop + flip for training and resize-shorter-side + centre crop for evaluation,
with Pillow on encoded bytes or uint8 arrays (JPEGs are decoded at a reduced scale when the
crop allows it). Augmentation runs in numpy/PIL on the host; normalisation is left to the
jitted train step (`normalize` works on numpy and jax arrays alike), so the host ships 4x
fewer bytes. Colour augmentation (CBD_ENS's data-aug teachers, docs/data.md#colour-jitter):
SimCLR v2 colour jitter + random grayscale, vectorised over uint8 batches.
"""

from __future__ import annotations

import io
import math
from typing import NamedTuple

import numpy as np
from PIL import Image

AUGMENTS = ("cifar", "imagenet", "none")
# `auto` (the folder recipe's default) picks by the input size: CIFAR's pad-crop-flip up to
# this side, where a random-resized crop has few pixels to choose from and the in-RAM split
# trains on the device path; ImageNet-style random-resized crops above it.
AUTO_CIFAR_MAX_SIZE = 64
AUGMENT_CHOICES = (*AUGMENTS, "auto")


def resolve(kind: str, image_size: int) -> str:
    """The augmentation `kind` stands for at `image_size` (`auto` resolved)."""
    if kind != "auto":
        return kind
    return "cifar" if image_size <= AUTO_CIFAR_MAX_SIZE else "imagenet"


# ImageNet-style augmentation defaults: torchvision RandomResizedCrop (area [0.08, 1], aspect
# ratio [3/4, 4/3]); CBD uses area [0.05, 1] (its input_pipeline.py; config.data.crop_min_area).
DEFAULT_MIN_AREA = 0.08
ASPECT_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Evaluation resizes the shorter side to size / CENTER_CROP_FRACTION (256 for 224), then crops.
CENTER_CROP_FRACTION = 0.875
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Datasets normalised with ImageNet statistics (user folders too: most are natural photos).
IMAGENET_LIKE = ("imagenet_lt", "places_lt", "inat2018", "folder")
# The LDAM-DRW / BKD training scripts' Normalize constants. The std values are not CIFAR's
# true std; every LDAM-derived repo uses them, so keep them for parity.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
# mdistiller/dataset/cifar100.py: transforms.Normalize((0.5071, 0.4865, 0.4409),
# (0.2673, 0.2564, 0.2762)), the CIFAR-100 train split's own channel mean and std.
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
DIGITS_MEAN = (0.5,)
DIGITS_STD = (0.5,)
# config.data.norm_stats -> (mean, std) per channel, in [0, 1] pixel units.
NORM_STATS = {
    "ldam": (CIFAR_MEAN, CIFAR_STD),
    "cifar100": (CIFAR100_MEAN, CIFAR100_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "digits": (DIGITS_MEAN, DIGITS_STD),
}
NORM_STATS_CHOICES = ("auto", *NORM_STATS)  # auto: the dataset's (`dataset_stats`)


def dataset_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel, in [0, 1] pixel units, for a dataset name."""
    if name in ("cifar10", "cifar100"):
        return NORM_STATS["ldam"]
    if name == "digits":
        return NORM_STATS["digits"]
    if name in IMAGENET_LIKE:
        return NORM_STATS["imagenet"]
    raise ValueError(f"no normalisation statistics for dataset {name!r}")


def normalize(images, mean, std):
    """uint8 images -> float32 `(x / 255 - mean) / std`, per channel (numpy or jax arrays)."""
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return (images.astype(np.float32) / np.float32(255.0) - mean) / std


def draw_crop_flip(
    rng: np.random.Generator, n: int, pad: int = 4
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image crop offsets (rows, cols) in [0, 2*pad] and flip flags (p = 0.5)."""
    rows = rng.integers(0, 2 * pad + 1, size=n)
    cols = rng.integers(0, 2 * pad + 1, size=n)
    flips = rng.random(n) < 0.5
    return rows, cols, flips


def crop_flip(
    images: np.ndarray, rows: np.ndarray, cols: np.ndarray, flips: np.ndarray, pad: int = 4
) -> np.ndarray:
    """Zero-pads by `pad`, crops an HxW window at (rows, cols), flips where `flips`.

    One fancy-index gather for the whole batch (torchvision's RandomCrop(padding=pad) +
    RandomHorizontalFlip, applied per image but without a Python loop).
    """
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    y = rows[:, None] + np.arange(h)  # [B, H]
    x_order = np.where(flips[:, None], np.arange(w)[::-1], np.arange(w))
    x = cols[:, None] + x_order  # [B, W]
    return padded[np.arange(b)[:, None, None], y[:, :, None], x[:, None, :]]


def augment_batch(
    images: np.ndarray, rng: np.random.Generator, kind: str = "cifar", pad: int = 4
) -> np.ndarray:
    """Augments a uint8 batch: 'cifar' = pad-crop + flip, 'none' = identity."""
    if kind == "none":
        return images
    if kind == "cifar":
        return crop_flip(images, *draw_crop_flip(rng, len(images), pad), pad=pad)
    raise ValueError(f"unknown augmentation {kind!r}; choose one of {AUGMENTS}.")


# --------------------------------------------------------------------------------------------
# ImageNet-style per-image transforms (Pillow)
# --------------------------------------------------------------------------------------------


def open_image(image: bytes | np.ndarray) -> Image.Image:
    """A lazily decoded PIL image from encoded bytes, or a PIL view of a uint8 HWC array."""
    if isinstance(image, bytes | bytearray | np.bytes_):
        return Image.open(io.BytesIO(bytes(image)))
    array = np.asarray(image)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def draw_resized_crop(
    rng: np.random.Generator,
    width: int,
    height: int,
    min_area: float = DEFAULT_MIN_AREA,
    ratio: tuple[float, float] = ASPECT_RATIO,
) -> tuple[int, int, int, int]:
    """(left, top, w, h) of torchvision's RandomResizedCrop box: 10 tries, then a centre crop.

    Area fraction uniform in [min_area, 1], log-aspect uniform in log(ratio).
    """
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(min_area, 1.0)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    # Fallback (torchvision): the whole image, clamped to the aspect-ratio range.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def center_box(width: int, height: int, size: int, fraction: float) -> tuple[float, ...]:
    """(left, top, w, h) of the centre `size` crop after resizing the shorter side to
    `size / fraction`, in original pixel units."""
    crop = min(width, height) * fraction  # size / (size / fraction) of the shorter side
    return (width - crop) / 2, (height - crop) / 2, crop, crop


def _crop_resize(im: Image.Image, box: tuple[float, ...], size: int, flip: bool) -> np.ndarray:
    """Crops `box` (left, top, w, h) and resizes it to size x size (bilinear), RGB uint8.

    JPEGs are first decoded at the largest power-of-two reduction (`Image.draft`) that keeps
    the crop at least `size` pixels wide: the same output detail for a fraction of the work.
    The box is given in the original image's pixels and mapped to the decoded image's own
    coordinates, per axis: a reduced decode rounds each side up on its own (a 95x96 JPEG
    decodes at 48x48), so one factor for both axes would overflow the other side.
    """
    left, top, w, h = box
    full_w, full_h = im.size
    if im.format == "JPEG":
        scale = min(w, h) / size  # How much larger than needed the crop is.
        if scale >= 2:
            im.draft("RGB", (math.ceil(full_w / scale), math.ceil(full_h / scale)))
    if im.mode != "RGB":
        im = im.convert("RGB")
    region = decoded_region(box, (full_w, full_h), im.size)
    out = im.resize((size, size), Image.BILINEAR, box=region)
    if flip:
        out = out.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(out, dtype=np.uint8)


def decoded_region(
    box: tuple[float, ...], full_size: tuple[int, int], decoded_size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """(x0, y0, x1, y1) of `box` (left, top, w, h, original pixels) in the decoded image,
    clipped to it (Pillow rejects a box past the edge, even by a rounding error)."""
    left, top, w, h = box
    (full_w, full_h), (dec_w, dec_h) = full_size, decoded_size
    fx, fy = full_w / dec_w, full_h / dec_h  # > 1 on an axis a reduced decode shrank.
    return (
        max(left / fx, 0.0),
        max(top / fy, 0.0),
        min((left + w) / fx, float(dec_w)),
        min((top + h) / fy, float(dec_h)),
    )


def random_resized_crop_flip(
    image: bytes | np.ndarray,
    rng: np.random.Generator,
    size: int,
    min_area: float = DEFAULT_MIN_AREA,
) -> np.ndarray:
    """uint8 [size, size, 3]: RandomResizedCrop(size, (min_area, 1), (3/4, 4/3)) + flip p=0.5."""
    im = open_image(image)
    box = draw_resized_crop(rng, *im.size, min_area=min_area)
    flip = bool(rng.random() < 0.5)
    return _crop_resize(im, box, size, flip)


def resize_center_crop(
    image: bytes | np.ndarray, size: int, fraction: float = CENTER_CROP_FRACTION
) -> np.ndarray:
    """uint8 [size, size, 3]: resize the shorter side to size / fraction, centre-crop size."""
    im = open_image(image)
    return _crop_resize(im, center_box(*im.size, size, fraction), size, flip=False)


# --------------------------------------------------------------------------------------------
# Colour augmentation: SimCLR v2 colour jitter + random grayscale (CBD input_pipeline.py)
# --------------------------------------------------------------------------------------------

# ITU-R 601-2 luma weights (torchvision rgb_to_grayscale, PIL convert("L")).
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# SimCLR v2 `color_distortion(s)`: ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with p = 0.8, then
# RandomGrayscale(p = 0.2). CBD's data-aug teachers use s = 1 (input_pipeline.py,
# random_color_jitter).
COLOR_STRENGTH = 1.0
COLOR_JITTER_P = 0.8
GRAYSCALE_P = 0.2
# Op ids of `ColorParams.order`.
BRIGHTNESS, CONTRAST, SATURATION, HUE = range(4)


class ColorParams(NamedTuple):
    """Per-image draws of `draw_color_params` (index or slice them like one array)."""

    jitter: np.ndarray  # bool [n]: colour jitter applied (p = jitter_p)
    factors: np.ndarray  # float32 [n, 3]: brightness, contrast, saturation factors
    hue: np.ndarray  # float32 [n]: hue shift, in turns, in [-0.2s, 0.2s]
    order: np.ndarray  # int [n, 4]: the jitter ops (BRIGHTNESS .. HUE) in the order applied
    gray: np.ndarray  # bool [n]: converted to grayscale after the jitter (p = gray_p)

    def take(self, index) -> ColorParams:
        return ColorParams(*(a[index] for a in self))


def draw_color_params(
    rng: np.random.Generator,
    n: int,
    strength: float = COLOR_STRENGTH,
    jitter_p: float = COLOR_JITTER_P,
    gray_p: float = GRAYSCALE_P,
) -> ColorParams:
    """Draws the colour augmentation of n images; always the same number of draws for n.

    torchvision ColorJitter ranges: brightness / contrast / saturation factors uniform in
    [max(0, 1 - 0.8s), 1 + 0.8s], hue uniform in [-min(0.2s, 0.5), min(0.2s, 0.5)], the four
    ops in an independent random order per image.
    """
    jitter = rng.random(n) < jitter_p
    lo = max(0.0, 1.0 - 0.8 * strength)
    factors = rng.uniform(lo, 1.0 + 0.8 * strength, size=(n, 3)).astype(np.float32)
    h = min(0.2 * strength, 0.5)
    hue = rng.uniform(-h, h, size=n).astype(np.float32)
    order = np.argsort(rng.random((n, 4)), axis=1)
    gray = rng.random(n) < gray_p
    return ColorParams(jitter, factors, hue, order, gray)


def _luma(x: np.ndarray) -> np.ndarray:
    """float [..., 3] -> float [...]: ITU-R 601 luma (per channel: faster than x @ LUMA)."""
    return x[..., 0] * LUMA[0] + x[..., 1] * LUMA[1] + x[..., 2] * LUMA[2]


def _per_image(v: np.ndarray) -> np.ndarray:
    return v.reshape(-1, 1, 1, 1)


def _brightness(x: np.ndarray, f: np.ndarray) -> np.ndarray:
    return np.clip(x * _per_image(f), 0.0, 1.0)


def _contrast(x: np.ndarray, f: np.ndarray) -> np.ndarray:
    grey = _luma(x) if x.shape[-1] == 3 else x[..., 0]
    mean = grey.mean(axis=(1, 2)).reshape(-1, 1, 1, 1)
    f = _per_image(f)
    return np.clip(x * f + (1.0 - f) * mean, 0.0, 1.0)


def _saturation(x: np.ndarray, f: np.ndarray) -> np.ndarray:
    f = _per_image(f)
    return np.clip(x * f + (1.0 - f) * _luma(x)[..., None], 0.0, 1.0)


def _hue(x: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Rotates the hue by `shift` turns in HSV space (torchvision adjust_hue's float path).

    RGB -> (H, S, V) as torchvision's _rgb2hsv; back with the closed form
    c = V - V S clip(min(k, 4 - k), 0, 1), k = (n + 6H) mod 6, n = 5, 3, 1 for R, G, B.
    """
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    # Elementwise over the 3 channels: much faster than reductions over a length-3 axis.
    maxc = np.maximum(np.maximum(r, g), b)
    delta = maxc - np.minimum(np.minimum(r, g), b)
    d = np.where(delta > 0, delta, np.float32(1.0))
    # Six times the hue, before the shift; any value where delta = 0 (S = 0 makes H moot).
    h6 = np.where(maxc == r, (g - b) / d, np.where(maxc == g, 2.0 + (b - r) / d, 4.0 + (r - g) / d))
    h6 += np.float32(6.0) * shift.reshape(-1, 1, 1).astype(np.float32)
    vs = delta  # V * S = maxc * (delta / maxc)
    k = h6[..., None] + np.array([5.0, 3.0, 1.0], np.float32)
    k -= np.float32(6.0) * np.floor(k * np.float32(1.0 / 6.0))  # mod 6 (np.mod is slow)
    ramp = np.clip(np.minimum(k, np.float32(4.0) - k), 0.0, 1.0)
    return np.clip(maxc[..., None] - vs[..., None] * ramp, 0.0, 1.0).astype(x.dtype)


def color_augment(images: np.ndarray, params: ColorParams) -> np.ndarray:
    """Applies drawn colour jitter + grayscale to a uint8 batch [B, H, W, C] (C = 3 or 1).

    Semantics of torchvision's float ColorJitter / RandomGrayscale, as SimCLR v2's PyTorch
    ports use them: pixels scaled to [0, 1]; brightness blends towards black (x * f),
    contrast towards the image's mean luma, saturation towards each pixel's luma, each
    clipped to [0, 1]; hue is a rotation of H in HSV space; the four ops run in the drawn
    per-image order. Grayscale replaces every channel by the ITU-R 601 luma. The result is
    rounded and clipped to uint8 [0, 255]. Images neither jittered nor greyed come back
    bit-identical. Single-channel images: only brightness and contrast apply (saturation,
    hue and grayscale are the identity on them). Vectorised over the images that share an
    op at each of the 4 positions.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected a batch [B, H, W, 1 or 3], got shape {images.shape}")
    if len(params.jitter) != len(images):
        raise ValueError(f"{len(params.jitter)} colour draws for {len(images)} images")
    rgb = images.shape[-1] == 3
    touched = params.jitter | (params.gray & rgb)
    idx = np.flatnonzero(touched)
    if idx.size == 0:
        return images
    p = params.take(idx)
    x = images[idx].astype(np.float32) * np.float32(1.0 / 255.0)
    ops = {
        BRIGHTNESS: lambda y, s: _brightness(y, p.factors[s, 0]),
        CONTRAST: lambda y, s: _contrast(y, p.factors[s, 1]),
    }
    if rgb:
        ops[SATURATION] = lambda y, s: _saturation(y, p.factors[s, 2])
        ops[HUE] = lambda y, s: _hue(y, p.hue[s])
    for position in range(4):
        for op, fn in ops.items():
            sel = np.flatnonzero(p.jitter & (p.order[:, position] == op))
            if sel.size:
                x[sel] = fn(x[sel], sel)
    if rgb and p.gray.any():
        g = np.flatnonzero(p.gray)
        x[g] = _luma(x[g])[..., None]
    out = images.copy()
    out[idx] = np.clip(np.rint(x * np.float32(255.0)), 0, 255).astype(np.uint8)
    return out


def random_color_augment(
    images: np.ndarray,
    rng: np.random.Generator,
    strength: float = COLOR_STRENGTH,
    jitter_p: float = COLOR_JITTER_P,
    gray_p: float = GRAYSCALE_P,
) -> np.ndarray:
    """SimCLR v2 colour distortion of a uint8 batch: jitter (p = jitter_p), grayscale (gray_p)."""
    return color_augment(images, draw_color_params(rng, len(images), strength, jitter_p, gray_p))
