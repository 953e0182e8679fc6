"""Batch-vectorised CIFAR augmentation and normalisation (methods.md 2.1).

Augmentation runs on the host in numpy on uint8 batches; normalisation is left to the jitted
train step (`normalize` works on numpy and jax arrays alike), so the host ships 4x fewer bytes.
"""

from __future__ import annotations

import numpy as np

AUGMENTS = ("cifar", "none")
# BKD / LDAM-DRW constants (methods.md 2.1). The std values are not CIFAR's true std; every
# LDAM-derived repo uses them, so keep them for parity.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
DIGITS_MEAN = (0.5,)
DIGITS_STD = (0.5,)


def dataset_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel, in [0, 1] pixel units, for a dataset name."""
    if name in ("cifar10", "cifar100"):
        return CIFAR_MEAN, CIFAR_STD
    if name == "digits":
        return DIGITS_MEAN, DIGITS_STD
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
