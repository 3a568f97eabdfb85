"""The prepare stage's library function: source -> uint8 arrays, a split, a manifest and a grid."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ganforge.config import PrepareConfig, config_to_dict
from ganforge.data.decode import DecodeOptions
from ganforge.data.files import load_archive, load_folder
from ganforge.data.prepared import MANIFEST, save_split
from ganforge.data.sources import RawImages, load_cifar10, load_digits_source, load_mnist_family
from ganforge.errors import UserError
from ganforge.files import atomic_dir, write_json
from ganforge.images import save_grid

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, the weights PIL's convert("L") uses


def load_source(cfg: PrepareConfig) -> RawImages:
    """Dispatch on ``cfg.source``."""
    path = Path(cfg.path)
    options = DecodeOptions(cfg.resolution, cfg.resize, cfg.background)
    if cfg.source == "digits":
        return load_digits_source()
    if cfg.source in ("folder", "archive"):
        loader = load_folder if cfg.source == "folder" else load_archive
        return loader(path, options, cfg.max_bad_fraction)
    if cfg.source == "cifar10":
        return load_cifar10(path, cfg.download)
    return load_mnist_family(cfg.source, path, cfg.download)


def convert_channels(images: np.ndarray, channels: int | str) -> np.ndarray:
    """(N, C, H, W) -> (N, C', H, W) with C' = channels (``auto`` keeps C). Grey <- RGB uses BT.601 luma."""
    if channels == "auto" or images.shape[1] == channels:
        return images
    if channels == 1:
        grey = np.tensordot(_LUMA, images.astype(np.float64), axes=([0], [1]))  # (N, H, W)
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[:, None]
    return np.repeat(images, 3, axis=1)


def resize(images: np.ndarray, resolution: int) -> np.ndarray:
    """Antialiased bilinear resize of square uint8 images (N, C, H, H) -> (N, C, R, R)."""
    if images.shape[2] == resolution:
        return images
    out = np.empty((images.shape[0], images.shape[1], resolution, resolution), dtype=np.uint8)
    for start in range(0, len(images), 4096):  # bounded memory for large array sources
        x = torch.from_numpy(images[start:start + 4096]).float()  # (b, C, H, H)
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
        out[start:start + 4096] = x.round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def drop_duplicates(raw: RawImages) -> tuple[np.ndarray, list[dict[str, str]]]:
    """Indices of the first copy of each distinct image (by content hash), and the skipped duplicates."""
    if raw.deduplicated:
        return np.arange(len(raw.images)), []
    first: dict[bytes, int] = {}
    keep, skipped = [], []
    for i, image in enumerate(raw.images):
        digest = hashlib.sha256(image.tobytes()).digest()
        if digest in first:
            skipped.append({"path": f"image #{i}", "reason": f"exact duplicate of image #{first[digest]}"})
        else:
            first[digest] = i
            keep.append(i)
    return np.array(keep, dtype=np.int64), skipped


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic per-class split; returns sorted (train_indices, test_indices)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n_test = int(round(len(members) * test_fraction))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def prepare(cfg: PrepareConfig, out_dir: str | Path, grid_path: str | Path) -> dict[str, Any]:
    """Prepare ``cfg.source`` into ``out_dir`` (arrays + manifest.json) and a grid PNG; returns the manifest.

    The previous ``out_dir`` stays intact until the new one is complete.
    """
    raw = load_source(cfg)
    keep, duplicates = drop_duplicates(raw)
    if cfg.max_images is not None and len(keep) > cfg.max_images:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(keep, size=cfg.max_images, replace=False))
    images = resize(convert_channels(raw.images[keep], cfg.channels), cfg.resolution)  # (N, C, R, R)
    labels = raw.labels[keep]
    if raw.split is not None:
        split_of = raw.split[keep]
        splits = {"train": np.flatnonzero(split_of == 0), "test": np.flatnonzero(split_of == 1)}
    else:
        train_idx, test_idx = stratified_split(labels, cfg.test_fraction, cfg.seed)
        splits = {"train": train_idx, "test": test_idx}
    for split, idx in splits.items():
        if len(idx) == 0:
            where = "the source" if cfg.source == "digits" else cfg.path
            raise UserError(f"{where}: the {split} split is empty (prepare.test_fraction={cfg.test_fraction}, "
                            f"{len(keep)} images)")

    arrays = {split: (images[idx], labels[idx]) for split, idx in splits.items()}
    if cfg.hflip:  # offline augmentation: mirrored copies join the training split
        train_images, train_labels = arrays["train"]
        arrays["train"] = (np.concatenate([train_images, train_images[..., ::-1]]), np.tile(train_labels, 2))

    names = raw.class_names
    skipped = list(raw.skipped) + duplicates
    manifest = {
        "source": cfg.source,
        "source_path": None if cfg.source == "digits" else cfg.path,
        "source_hash": raw.source_hash,
        "resolution": cfg.resolution,
        "channels": int(images.shape[1]),
        "class_names": list(names),
        "labeled": names != ("all",),
        "split_from": "source layout" if raw.split is not None else f"stratified, test_fraction={cfg.test_fraction}",
        "counts": {split: int(len(a[0])) for split, a in arrays.items()},
        "counts_per_class": {
            split: {names[c]: int((a[1] == c).sum()) for c in range(len(names))} for split, a in arrays.items()
        },
        "files_seen": raw.total_files,
        "skipped_count": len(skipped),
        "skipped": skipped,
        "params": config_to_dict(cfg),
    }
    with atomic_dir(out_dir) as tmp:
        for split, (split_images, split_labels) in arrays.items():
            save_split(tmp, split, np.ascontiguousarray(split_images), split_labels)
        write_json(tmp / MANIFEST, manifest)

    train_images = arrays["train"][0]
    shown = np.sort(np.random.default_rng(cfg.seed).choice(len(train_images), min(64, len(train_images)), False))
    save_grid(torch.from_numpy(np.ascontiguousarray(train_images[shown])), grid_path)
    return manifest
