"""Reference statistics: the real images' features, extracted once by the reference stage.

They are stored in torch-fidelity's own cache format (``input2_cache_name`` under ``cache_root``), so evaluate,
every optimize variant and the package's parity check extract features of generated images only. The stage
caches both prepared splits: the reference split, and the other one for the real-vs-real floor. It always caches
them in the domain network's features, and with ``reference.feature_extractor: inception-v3-compat`` in
Inception's too (in the ``inception-v3-compat`` subdirectory).
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
from ganforge.evaluation.fidelity import (
    INCEPTION_EXTRACTOR,
    ExtractorWeights,
    RGBImages,
    extractor_weights,
    fidelity_kwargs,
)
from ganforge.evaluation.inception import IS_ABSENT_REASON
from ganforge.files import Each, atomic_dir, check_json, read_json, shown, usual_permissions, write_json

INFO_FILE = "reference.json"
SPLITS = ("train", "test")
# The fields of reference.json that are read back; the others are compared with what they must equal.
_INFO_SHAPE = {"cache_names": Each(str), "counts": Each(int), "files": [str]}


@dataclass(frozen=True)
class ReferenceStats:
    """Cached real-image statistics in ``directory``, as described by its ``reference.json``.

    Args:
        directory: torch-fidelity ``cache_root`` holding the cached features and FID statistics.
        weights: the extractor they were computed with, in this environment (hash-checked against the record).
        split: the reference split; :attr:`floor_split` is the other one.
        counts: images per split.
        info: the whole ``reference.json`` record.
    """

    directory: Path
    weights: ExtractorWeights
    split: str
    counts: dict[str, int]
    info: dict[str, Any]

    @property
    def floor_split(self) -> str:
        return next(s for s in SPLITS if s != self.split)

    @property
    def feature_extractor(self) -> str:
        return self.weights.extractor

    def cache_name(self, split: str) -> str:
        """torch-fidelity's cache name of ``split``'s statistics (pass it as input and input cache name)."""
        return self.info["cache_names"][split]

    def fidelity_kwargs(self, batch_size: int, seed: int) -> dict[str, Any]:
        """torch-fidelity settings that read this directory's cache."""
        return fidelity_kwargs(self.weights, batch_size, seed) | {
            "cache": True, "cache_root": str(self.directory)}


def extractors(cfg: ReferenceConfig) -> tuple[str, ...]:
    """The extractors the reference stage caches statistics for: always the domain network (in-loop FID,
    screening of optimize variants, the package's parity check), and Inception when it is asked for."""
    return ("domain",) + ((INCEPTION_EXTRACTOR,) if cfg.feature_extractor == INCEPTION_EXTRACTOR else ())


def extractor_dir(directory: Path, extractor: str) -> Path:
    """Where ``extractor``'s statistics live: the domain network's at the top, Inception's in a subdirectory."""
    return directory if extractor == "domain" else directory / extractor


def _split_images(data_dir: str | Path, split: str, cfg: ReferenceConfig, rgb: bool) -> Dataset:
    images: Dataset = ImageTensorDataset(load_split(data_dir, split))
    if cfg.max_samples is not None and len(images) > cfg.max_samples:
        rows = np.sort(np.random.default_rng(cfg.seed).permutation(len(images))[:cfg.max_samples])
        images = Subset(images, rows.tolist())
    return RGBImages(images) if rgb else images


def compute_reference(cfg: ReferenceConfig, data_dir: str | Path, featurizer_path: str | Path,
                      out_dir: str | Path, metrics_path: str | Path) -> dict[str, Any]:
    """Extract and cache both splits' features and FID statistics under ``out_dir`` (swapped in atomically), for
    each of :func:`extractors`, and write the real images' Inception Score and the extraction speed to
    ``metrics_path`` (the domain network's at the top, Inception's under ``inception``)."""
    weights = {extractor: extractor_weights(cfg, featurizer_path, extractor) for extractor in extractors(cfg)}
    metrics: dict[str, Any] = {"feature_extractor": cfg.feature_extractor, "split": cfg.split}
    with atomic_dir(out_dir) as tmp:
        for extractor, w in weights.items():
            directory = extractor_dir(tmp, extractor)
            directory.mkdir(exist_ok=True)
            split_metrics = _cache_splits(cfg, w, data_dir, directory, extractors(cfg))
            if extractor == "domain":
                metrics |= split_metrics
            else:
                metrics["inception"] = split_metrics
    write_json(metrics_path, metrics)
    return metrics


def _cache_splits(cfg: ReferenceConfig, weights: ExtractorWeights, data_dir: str | Path, directory: Path,
                  all_extractors: tuple[str, ...]) -> dict[str, Any]:
    """Cache both splits' statistics for one extractor in ``directory`` with its ``reference.json``."""
    info: dict[str, Any] = {
        "feature_extractor": weights.extractor,
        "feature_extractor_sha256": weights.sha256,
        "feature_extractor_source": weights.source,
        "feature_extractor_logits": weights.logits,
        "split": cfg.split,
        "max_samples": cfg.max_samples,
        "seed": cfg.seed,
        "batch_size": cfg.batch_size,
        "torch_fidelity_version": torch_fidelity.__version__,
        "torch_version": torch.__version__,
        "cache_names": {split: f"{split}-{weights.extractor}-{weights.sha256[:16]}" for split in SPLITS},
        "counts": {},
    }
    if weights.extractor == "domain":
        info["extractors"] = list(all_extractors)
    metrics: dict[str, Any] = {} if weights.logits else {"isc_absent": IS_ABSENT_REASON}
    for split in SPLITS:
        images = _split_images(data_dir, split, cfg, weights.rgb)
        name = info["cache_names"][split]
        start = time.perf_counter()
        # One extraction: input1 fills the cache (features, logits and FID statistics) and input2 reads it
        # back. The Inception Score of real images comes for free; their self-FID is a sanity check.
        raw = torch_fidelity.calculate_metrics(
            input1=images, input1_cache_name=name, input2=images, input2_cache_name=name,
            isc=weights.logits, fid=True, **fidelity_kwargs(weights, cfg.batch_size, cfg.seed),
            cache=True, cache_root=str(directory))
        seconds = time.perf_counter() - start
        info["counts"][split] = len(images)
        metrics[split] = {"count": len(images), "self_fid": float(raw[torch_fidelity.KEY_METRIC_FID]),
                          "extract_img_per_s": len(images) / seconds}
        if weights.logits:
            metrics[split]["isc_mean"] = float(raw[torch_fidelity.KEY_METRIC_ISC_MEAN])
    info["files"] = sorted(p.name for p in directory.iterdir())
    for name in info["files"]:
        usual_permissions(directory / name)  # torch-fidelity's cache writer leaves 0600
    write_json(directory / INFO_FILE, info)
    return metrics


def load_reference(directory: str | Path, cfg: ReferenceConfig, featurizer_path: str | Path,
                   extractor: str = "domain") -> ReferenceStats:
    """Open ``extractor``'s reference statistics in ``directory`` after checking they were computed with ``cfg``,
    with this extractor's weights and this torch-fidelity version; anything else is a one-line
    :class:`UserError`."""
    if extractor not in extractors(cfg):
        raise UserError(f"{extractor} statistics need reference.feature_extractor {extractor!r}; it is "
                        f"{cfg.feature_extractor!r}")
    directory = extractor_dir(Path(directory), extractor)
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
    expected = {"split": cfg.split, "max_samples": cfg.max_samples}
    if extractor == "domain":
        expected["feature_extractor"] = "domain"
        if info.get("extractors") != list(extractors(cfg)):
            raise UserError(f"{info_path}: computed for extractors {shown(info.get('extractors'))} but params say "
                            f"reference.feature_extractor {cfg.feature_extractor!r}; {rerun}")
    for key, value in expected.items():
        if info.get(key) != value:
            raise UserError(f"{info_path}: computed with {key} {shown(info.get(key))} but params say "
                            f"reference.{key} {value!r}; {rerun}")
    weights = extractor_weights(cfg, featurizer_path, extractor)
    if weights.sha256 != info.get("feature_extractor_sha256"):
        raise UserError(f"{info_path}: computed with different {extractor} weights than {weights.path}; {rerun}")
    missing = [name for name in info["files"] if not (directory / name).is_file()]
    if missing or not info["files"]:
        raise UserError(f"{directory / (missing or ['(cache files)'])[0]}: missing from the reference statistics; "
                        f"{rerun}")
    return ReferenceStats(directory, weights, cfg.split, dict(info["counts"]), info)
