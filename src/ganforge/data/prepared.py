"""The prepared-data format: uint8 arrays that training memory-maps, plus ``manifest.json``.

Layout of a prepared directory::

    {split}_images.npy   uint8 (N, C, R, R)
    {split}_labels.npy   int64 (N,)
    manifest.json        counts, class names, source hash, resolved params
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ganforge.errors import UserError
from ganforge.files import read_json

SPLITS = ("train", "test")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PreparedSplit:
    """One split of prepared data.

    Args:
        images: uint8 array (N, C, R, R), memory-mapped.
        labels: int64 array (N,).
        class_names: names of the label indices.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def resolution(self) -> int:
        return int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])


def save_split(out_dir: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write one split's arrays into ``out_dir`` (the caller makes the directory write atomic)."""
    assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[2] == images.shape[3], images.shape
    assert labels.shape == (images.shape[0],), (labels.shape, images.shape)
    np.save(out_dir / f"{split}_images.npy", images)
    np.save(out_dir / f"{split}_labels.npy", labels.astype(np.int64))


def read_manifest(prepared_dir: str | Path) -> dict[str, Any]:
    """The manifest of a prepared directory."""
    return read_json(Path(prepared_dir) / MANIFEST)


def load_split(prepared_dir: str | Path, split: str) -> PreparedSplit:
    """Memory-map one split of a prepared directory."""
    prepared_dir = Path(prepared_dir)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    manifest = read_manifest(prepared_dir)
    paths = [prepared_dir / f"{split}_{part}.npy" for part in ("images", "labels")]
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: prepared array not found; run the prepare stage first")
    images = np.load(paths[0], mmap_mode="r")
    labels = np.load(paths[1])
    return PreparedSplit(images, labels, tuple(manifest["class_names"]))


class ImageTensorDataset(Dataset):
    """A prepared split as a Dataset of uint8 tensors (C, R, R), the input torch-fidelity expects."""

    def __init__(self, split: PreparedSplit) -> None:
        self.images = split.images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[index]))
