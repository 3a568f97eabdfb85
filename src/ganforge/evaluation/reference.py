"""Reference statistics: the real images' features, extracted once by the reference stage.

They are stored in torch-fidelity's own cache format (``input2_cache_name`` under ``cache_root``), so evaluate,
every optimize variant and the package's parity check extract features of generated images only. The stage
caches both prepared splits: the reference split, and the other one for the real-vs-real floor.
``reference.json`` records what the statistics were computed with; :func:`load_reference` refuses them when the
params, the extractor's weights or the torch-fidelity version no longer match.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import Dataset, Subset

from ganforge.config import ReferenceConfig
from ganforge.data.prepared import ImageTensorDataset, load_split
from ganforge.errors import UserError
from ganforge.evaluation.fidelity import INCEPTION_EXTRACTOR, RGBImages, extractor_weights, fidelity_kwargs
from ganforge.files import Each, atomic_dir, check_json, read_json, sha256_file, shown, usual_permissions, write_json

INFO_FILE = "reference.json"
SPLITS = ("train", "test")
# The fields of reference.json that are read back; the others are compared with what they must equal.
_INFO_SHAPE = {"cache_names": Each(str), "counts": Each(int), "files": [str]}


@dataclass(frozen=True)
class ReferenceStats:
    """Cached real-image statistics in ``directory``, as described by its ``reference.json``.

    Args:
        directory: torch-fidelity ``cache_root`` holding the cached features and FID statistics.
        feature_extractor: ``reference.feature_extractor`` they were computed with.
        weights_path: the extractor's weights file in this environment (hash-checked against the record).
        split: the reference split; :attr:`floor_split` is the other one.
        counts: images per split.
        info: the whole ``reference.json`` record.
    """

    directory: Path
    feature_extractor: str
    weights_path: Path
    split: str
    counts: dict[str, int]
    info: dict[str, Any]

    @property
    def floor_split(self) -> str:
        return next(s for s in SPLITS if s != self.split)

    @property
    def rgb(self) -> bool:
        """Whether images reach the extractor as RGB (Inception takes nothing else)."""
        return self.feature_extractor == INCEPTION_EXTRACTOR

    def cache_name(self, split: str) -> str:
        """torch-fidelity's cache name of ``split``'s statistics (pass it as input and input cache name)."""
        return self.info["cache_names"][split]

    def fidelity_kwargs(self, batch_size: int, seed: int) -> dict[str, Any]:
        """torch-fidelity settings that read this directory's cache."""
        return fidelity_kwargs(self.feature_extractor, self.weights_path, batch_size, seed) | {
            "cache": True, "cache_root": str(self.directory)}


def _split_images(data_dir: str | Path, split: str, cfg: ReferenceConfig) -> Dataset:
    images: Dataset = ImageTensorDataset(load_split(data_dir, split))
    if cfg.max_samples is not None and len(images) > cfg.max_samples:
        rows = np.sort(np.random.default_rng(cfg.seed).permutation(len(images))[:cfg.max_samples])
        images = Subset(images, rows.tolist())
    return RGBImages(images) if cfg.feature_extractor == INCEPTION_EXTRACTOR else images


def compute_reference(cfg: ReferenceConfig, data_dir: str | Path, featurizer_path: str | Path,
                      out_dir: str | Path, metrics_path: str | Path) -> dict[str, Any]:
    """Extract and cache both splits' features and FID statistics under ``out_dir`` (swapped in atomically),
    and write the real images' Inception Score and the extraction speed to ``metrics_path``."""
    weights = extractor_weights(cfg, featurizer_path)
    sha = sha256_file(weights)
    info: dict[str, Any] = {
        "feature_extractor": cfg.feature_extractor,
        "feature_extractor_sha256": sha,
        "split": cfg.split,
        "max_samples": cfg.max_samples,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "torch_fidelity_version": torch_fidelity.__version__,
        "torch_version": torch.__version__,
        "cache_names": {split: f"{split}-{cfg.feature_extractor}-{sha[:16]}" for split in SPLITS},
        "counts": {},
    }
    metrics: dict[str, Any] = {"feature_extractor": cfg.feature_extractor, "split": cfg.split}
    with atomic_dir(out_dir) as tmp:
        for split in SPLITS:
            images = _split_images(data_dir, split, cfg)
            name = info["cache_names"][split]
            start = time.perf_counter()
            # One extraction: input1 fills the cache (features, logits and FID statistics) and input2 reads it
            # back. The Inception Score of real images comes for free; their self-FID is a sanity check.
            raw = torch_fidelity.calculate_metrics(
                input1=images, input1_cache_name=name, input2=images, input2_cache_name=name,
                isc=True, fid=True, **fidelity_kwargs(cfg.feature_extractor, weights, cfg.batch_size, cfg.seed),
                cache=True, cache_root=str(tmp))
            seconds = time.perf_counter() - start
            info["counts"][split] = len(images)
            metrics[split] = {"count": len(images), "isc_mean": float(raw[torch_fidelity.KEY_METRIC_ISC_MEAN]),
                              "self_fid": float(raw[torch_fidelity.KEY_METRIC_FID]),
                              "extract_img_per_s": len(images) / seconds}
        info["files"] = sorted(p.name for p in tmp.iterdir())
        for name in info["files"]:
            usual_permissions(tmp / name)  # torch-fidelity's cache writer leaves 0600
        write_json(tmp / INFO_FILE, info)
    write_json(metrics_path, metrics)
    return metrics


def load_reference(directory: str | Path, cfg: ReferenceConfig, featurizer_path: str | Path) -> ReferenceStats:
    """Open the reference statistics in ``directory`` after checking they were computed with ``cfg``, with
    this extractor's weights and this torch-fidelity version; anything else is a one-line :class:`UserError`."""
    directory = Path(directory)
    info_path = directory / INFO_FILE
    info = read_json(info_path)
    check_json(info, _INFO_SHAPE, str(info_path))
    for key in ("cache_names", "counts"):
        if set(info[key]) != set(SPLITS):
            raise UserError(f"{info_path}: {key}: expected one entry per split ({', '.join(SPLITS)}), got "
                            f"{shown(sorted(info[key]))}")
    for field, name in [*((f"cache_names.{s}", n) for s, n in info["cache_names"].items()),
                        *((f"files[{i}]", n) for i, n in enumerate(info["files"]))]:
        if name in ("", ".", "..") or not name.isprintable() or Path(name).name != name:
            raise UserError(f"{info_path}: {field}: expected a plain file name, got {shown(name)}")
    for split, count in info["counts"].items():
        if count < 1:
            raise UserError(f"{info_path}: counts.{split}: expected a positive image count, got {count}")
    rerun = "run `dvc repro reference` to recompute them"
    installed = torch_fidelity.__version__
    recorded = info.get("torch_fidelity_version")
    if recorded != installed:
        plain = isinstance(recorded, str) and recorded.isprintable() and len(recorded) <= 60
        raise UserError(f"{info_path}: statistics computed with torch-fidelity {recorded if plain else shown(recorded)}"
                        f", this environment has {installed}; {rerun}")
    for key in ("feature_extractor", "split", "max_samples"):
        if info.get(key) != getattr(cfg, key):
            raise UserError(f"{info_path}: computed with {key} {shown(info.get(key))} but params say "
                            f"reference.{key} {getattr(cfg, key)!r}; {rerun}")
    weights = extractor_weights(cfg, featurizer_path)
    if sha256_file(weights) != info.get("feature_extractor_sha256"):
        raise UserError(f"{info_path}: computed with different {cfg.feature_extractor} weights than {weights}; "
                        f"{rerun}")
    missing = [name for name in info["files"] if not (directory / name).is_file()]
    if missing or not info["files"]:
        raise UserError(f"{directory / (missing or ['(cache files)'])[0]}: missing from the reference statistics; "
                        f"{rerun}")
    return ReferenceStats(directory, cfg.feature_extractor, weights, cfg.split, dict(info["counts"]), info)
