"""Arrays cached next to prepared data (decoded CIFAR splits, record-split labels).

A leaf module: `sources` and `records` both write caches, so the writer lives below both.
"""

from __future__ import annotations

import os
import uuid

import numpy as np


def save_atomic(path: str, array: np.ndarray) -> None:
    """np.save via a temp file + rename, so a reader never sees a partial cache file."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"  # Unique per writer; plain open() honours umask.
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
