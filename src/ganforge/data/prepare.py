"""The prepare stage's library function: source -> resized uint8 arrays, a split, a manifest and a grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ganforge.config import PrepareConfig, config_to_dict
from ganforge.data.prepared import MANIFEST, save_split
from ganforge.data.sources import SOURCES, RawImages
from ganforge.files import atomic_dir, write_json
from ganforge.images import save_grid


def resize(images: np.ndarray, resolution: int) -> np.ndarray:
    """Antialiased bilinear resize of square uint8 images (N, C, H, H) -> (N, C, R, R)."""
    if images.shape[2] == resolution:
        return images
    x = torch.from_numpy(images).float()  # (N, C, H, H)
    x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).numpy()  # (N, C, R, R)


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


def prepare(cfg: PrepareConfig, out_dir: str | Path, grid_path: str | Path) -> dict:
    """Prepare ``cfg.source`` into ``out_dir`` (arrays + manifest.json) and a grid PNG; returns the manifest."""
    raw: RawImages = SOURCES[cfg.source]()
    images = resize(raw.images, cfg.resolution)
    train_idx, test_idx = stratified_split(raw.labels, cfg.test_fraction, cfg.seed)
    splits = {"train": train_idx, "test": test_idx}

    manifest = {
        "source": cfg.source,
        "source_hash": raw.source_hash,
        "resolution": cfg.resolution,
        "channels": int(images.shape[1]),
        "class_names": list(raw.class_names),
        "counts": {split: int(len(idx)) for split, idx in splits.items()},
        "counts_per_class": {
            split: {raw.class_names[c]: int((raw.labels[idx] == c).sum()) for c in range(len(raw.class_names))}
            for split, idx in splits.items()
        },
        "params": config_to_dict(cfg),
    }
    with atomic_dir(out_dir) as tmp:
        for split, idx in splits.items():
            save_split(tmp, split, images[idx], raw.labels[idx])
        write_json(tmp / MANIFEST, manifest)

    rng = np.random.default_rng(cfg.seed)
    shown = np.sort(rng.choice(len(train_idx), size=min(64, len(train_idx)), replace=False))
    save_grid(torch.from_numpy(images[train_idx[shown]]), grid_path)
    return manifest
