"""The evaluate stage's library function: score the trained generator, time it, and draw its sample and
nearest-neighbour grids."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ganforge.config import EvaluateConfig, ReferenceConfig
from ganforge.data.prepared import load_split
from ganforge.evaluation.features import load_featurizer
from ganforge.evaluation.fidelity import INCEPTION_EXTRACTOR
from ganforge.evaluation.inception import IS_ABSENT_REASON
from ganforge.evaluation.protocol import (
    Protocol,
    figure_suffix,
    make_protocol,
    psi_key,
    score_generator,
    score_real_floor,
    score_truncation,
)
from ganforge.evaluation.reference import extractors
from ganforge.files import write_json
from ganforge.images import save_grid, to_uint8
from ganforge.measurement.speed import time_generators
from ganforge.models import load_generator
from ganforge.models.registry import trained_generator_path


@torch.no_grad()
def sample_grid(generator: torch.nn.Module, z_dim: int, count: int, seed: int, path: str | Path) -> None:
    """Save a grid of ``count`` images from fixed latents (the same seed always draws the same grid)."""
    z = torch.randn(count, z_dim, generator=torch.Generator().manual_seed(seed))  # (count, z_dim)
    save_grid(to_uint8(generator.eval()(z)), path)


@torch.no_grad()
def nearest_neighbour_grid(generator: torch.nn.Module, z_dim: int, featurizer_path: str | Path,
                           data_dir: str | Path, count: int, seed: int, path: str | Path, neighbours: int = 5) -> None:
    """Save a grid whose rows are one generated image followed by its ``neighbours`` closest training images
    by L2 distance in the domain feature space. Near-copies in a row mean the generator memorised data."""
    net = load_featurizer(featurizer_path)
    z = torch.randn(count, z_dim, generator=torch.Generator().manual_seed(seed + 1))  # (count, z_dim)
    fakes = to_uint8(generator.eval()(z))  # (count, C, R, R)
    train = load_split(data_dir, "train").images
    train_features = torch.cat([net(torch.from_numpy(np.array(train[i:i + 1024])))[0]
                                for i in range(0, len(train), 1024)])  # (N, F)
    closest = torch.cdist(net(fakes)[0], train_features).topk(neighbours, largest=False).indices  # (count, k)
    rows = [torch.cat([fakes[i:i + 1], torch.from_numpy(np.stack([train[j] for j in closest[i].tolist()]))])
            for i in range(count)]  # each (1 + k, C, R, R), neighbours nearest first
    save_grid(torch.cat(rows), path, nrow=neighbours + 1)


def inception_figures(generator: torch.nn.Module, z_dim: int, protocol: Protocol) -> dict[str, Any]:
    """The Inception figures, named by what they are (``fid_inception_10k``), with their protocol. Without
    logits the Inception Score is absent, and ``isc_inception_absent`` says why."""
    suffix = figure_suffix(INCEPTION_EXTRACTOR, protocol.num_samples)
    scores = score_generator(generator, z_dim, protocol)
    floor = score_real_floor(protocol)
    figures: dict[str, Any] = {}
    for name, value in scores.items():  # kid_mean -> kid_inception_10k_mean
        head, _, tail = name.partition("_")
        figures[f"{head}_{suffix}" + (f"_{tail}" if tail else "")] = value
    figures[f"fid_real_floor_{suffix}"] = floor["fid_real_floor"]
    if "isc_mean" not in scores:
        figures["isc_inception_absent"] = IS_ABSENT_REASON
    figures[f"protocol_{suffix}"] = protocol.describe()
    return figures


def evaluate(cfg: EvaluateConfig, reference_cfg: ReferenceConfig, train_dir: str | Path, data_dir: str | Path,
             featurizer_path: str | Path, reference_dir: str | Path, metrics_path: str | Path, grid_path: str | Path,
             nearest_path: str | Path, speed_path: str | Path) -> dict[str, Any]:
    """Score the train stage's ``cfg.generator`` (best or last) with torch-fidelity against the reference
    stage's statistics, measure its speed, and write the metrics JSON, a sample grid and a nearest-neighbour
    grid (in the domain feature space). The domain network always scores (``fid``, its IS, truncations);
    with Inception statistics in the reference, Inception scores too (:func:`inception_figures`).

    Quality goes to ``metrics_path`` and speed to ``speed_path``: the same params and seed give a bit-identical
    quality file on the same machine, while timings differ from run to run. Returns both merged.
    """
    generator, spec = load_generator(trained_generator_path(train_dir, cfg.generator))
    protocol = make_protocol(cfg, reference_cfg, reference_dir, featurizer_path)
    start = time.perf_counter()
    metrics: dict[str, Any] = score_generator(generator, spec.z_dim, protocol)
    metrics |= score_real_floor(protocol)
    metrics["truncation"] = {psi_key(psi): score_truncation(generator, spec.z_dim, protocol, psi)
                             for psi in cfg.truncation_psis}
    scoring_s = {"domain": time.perf_counter() - start}
    at_batch = time_generators({"g": generator}, spec.z_dim, cfg.speed_batch, 3, cfg.speed_repeats, cfg.seed)["g"]
    at_one = time_generators({"g": generator}, spec.z_dim, 1, 3, cfg.speed_repeats, cfg.seed)["g"]
    speed = {"img_per_s": at_batch.img_per_s, "img_per_s_min": at_batch.img_per_s_min,
             "img_per_s_max": at_batch.img_per_s_max, "latency_ms_batch1": at_one.ms_per_batch,
             "protocol": {"speed_batch": cfg.speed_batch, "speed_repeats": cfg.speed_repeats,
                          "torch_threads": torch.get_num_threads()}}
    metrics["protocol"] = protocol.describe()
    if INCEPTION_EXTRACTOR in extractors(reference_cfg):
        start = time.perf_counter()
        metrics |= inception_figures(generator, spec.z_dim,
                                     make_protocol(cfg, reference_cfg, reference_dir, featurizer_path,
                                                   INCEPTION_EXTRACTOR))
        scoring_s["inception"] = time.perf_counter() - start
    speed["scoring_s"] = scoring_s  # what each extractor's scoring cost (the truncations are domain-only)
    write_json(metrics_path, metrics)
    write_json(speed_path, speed)
    sample_grid(generator, spec.z_dim, cfg.grid_size, cfg.seed, grid_path)
    nearest_neighbour_grid(generator, spec.z_dim, featurizer_path, data_dir, cfg.nearest_count, cfg.seed,
                           nearest_path)
    return metrics | speed
