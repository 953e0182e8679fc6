"""A split held in RAM as arrays: what CIFAR, digits and small image folders become."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArraySplit:
    """One split in RAM: uint8 images [N, H, W, C] and int32 labels [N]."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] = ()
    fingerprint: str = ""  # Identity of the prepared source data ("" = the dataset name).
    # Where the images came from and whether they are the original pixels (task.json's
    # data_source): {"source": ..., "encoding": "png" | "jpeg" | ..., "lossless": bool}.
    data_source: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8 [N, H, W, C], got {self.images.dtype}")
        if self.labels.shape != (len(self.images),):
            raise ValueError(f"labels {self.labels.shape} do not match {len(self.images)} images")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(H, W, C) of the images the model sees."""
        return tuple(self.images.shape[1:])

    def subset(self, indices: np.ndarray) -> ArraySplit:
        """The examples at `indices`, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])

    def class_counts(self) -> np.ndarray:
        """int64 [num_classes]: examples per class."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)
