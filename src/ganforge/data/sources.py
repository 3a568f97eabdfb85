"""Image sources. Each returns raw uint8 images (N, C, H, W), integer labels (N,) and class names."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RawImages:
    """Images as loaded from a source, before resizing and splitting.

    Args:
        images: uint8 array (N, C, H, W).
        labels: int64 array (N,), indices into ``class_names``.
        class_names: one name per class.
        source_hash: sha256 over the source's pixels and labels, so a changed source is visible.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    source_hash: str


def load_digits_source() -> RawImages:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 grey images, pixel values 0..16. Offline."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.asarray(bunch.images, dtype=np.float64)  # (N, 8, 8) in [0, 16]
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return RawImages(images, labels, tuple(str(n) for n in bunch.target_names), _hash_arrays(images, labels))


def _hash_arrays(images: np.ndarray, labels: np.ndarray) -> str:
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


SOURCES = {"digits": load_digits_source}
