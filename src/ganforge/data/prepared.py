"""The prepared-data format: uint8 arrays that training memory-maps, plus ``manifest.json``.

Layout of a prepared directory::

    {split}_images.npy   uint8 (N, C, R, R)
    {split}_labels.npy   int64 (N,)
    manifest.json        counts, class names, source hash, resolved params
"""

from __future__ import annotations

import json
from collections.abc import Callable
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


def _field(manifest: dict[str, Any], path: Path, key: str, ok: Callable[[Any], bool], expected: str) -> Any:
    value = manifest
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise UserError(f"{path}: {key}: missing; run the prepare stage again")
        value = value[part]
    if not ok(value):
        raise UserError(f"{path}: {key}: expected {expected}, got {json.dumps(value)[:60]}; run the prepare stage "
                        "again")
    return value


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_manifest(prepared_dir: str | Path) -> dict[str, Any]:
    """The manifest of a prepared directory; the fields readers use are checked, a bad one is a
    :class:`UserError` naming the file and the field."""
    path = Path(prepared_dir) / MANIFEST
    manifest = read_json(path)
    if not isinstance(manifest, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(manifest).__name__}; run the prepare stage again")
    _field(manifest, path, "class_names", lambda v: isinstance(v, list) and v and all(isinstance(n, str) for n in v),
           "a non-empty list of names")
    _field(manifest, path, "source_hash", lambda v: isinstance(v, str), "a string")
    _field(manifest, path, "resolution", lambda v: _count(v) and v > 0, "a positive integer")
    _field(manifest, path, "channels", lambda v: v in (1, 3) and not isinstance(v, bool), "1 or 3")
    for split in SPLITS:
        _field(manifest, path, f"counts.{split}", _count, "a non-negative integer")
    return manifest


def _load_array(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{path}: prepared array not found; run the prepare stage first")
    with open(path, "rb") as f:
        if f.read(6) != b"\x93NUMPY":  # else numpy's own message suggests unpickling it
            raise UserError(f"{path}: not a .npy file; run the prepare stage again")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # truncated, a bad header, pickled objects
        reason = " ".join(str(e).split())
        raise UserError(f"{path}: not a readable .npy array ({reason}); run the prepare stage again") from None


def load_split(prepared_dir: str | Path, split: str) -> PreparedSplit:
    """Memory-map one split of a prepared directory, checked against its manifest."""
    prepared_dir = Path(prepared_dir)
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    manifest = read_manifest(prepared_dir)
    n, side, classes = manifest["counts"][split], manifest["resolution"], len(manifest["class_names"])
    images_path, labels_path = (prepared_dir / f"{split}_{part}.npy" for part in ("images", "labels"))
    images = _load_array(images_path, mmap=True)
    expected = (n, manifest["channels"], side, side)
    if images.dtype != np.uint8 or images.shape != expected:
        raise UserError(f"{images_path}: expected uint8 {expected} (from {MANIFEST}), got {images.dtype} "
                        f"{images.shape}; run the prepare stage again")
    labels = _load_array(labels_path, mmap=False)
    if labels.dtype != np.int64 or labels.shape != (n,):
        raise UserError(f"{labels_path}: expected int64 ({n},) (from {MANIFEST}), got {labels.dtype} "
                        f"{labels.shape}; run the prepare stage again")
    if n and not 0 <= labels.min() <= labels.max() < classes:
        raise UserError(f"{labels_path}: labels outside 0..{classes - 1} (the {classes} class_names of "
                        f"{MANIFEST}); run the prepare stage again")
    return PreparedSplit(images, labels, tuple(manifest["class_names"]))


class ImageTensorDataset(Dataset):
    """A prepared split as a Dataset of uint8 tensors (C, R, R), the input torch-fidelity expects."""

    def __init__(self, split: PreparedSplit) -> None:
        self.images = split.images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.images[index]))
