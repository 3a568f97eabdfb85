"""The evaluate stage's library function: score the trained generator and draw its sample grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ganforge.config import EvaluateConfig
from ganforge.evaluation.fidelity import make_protocol, score_generator, score_real_floor
from ganforge.files import write_json
from ganforge.images import save_grid, to_uint8
from ganforge.models import load_generator
from ganforge.models.registry import trained_generator_path


@torch.no_grad()
def sample_grid(generator: torch.nn.Module, z_dim: int, count: int, seed: int, path: str | Path) -> None:
    """Save a grid of ``count`` images from fixed latents (the same seed always draws the same grid)."""
    z = torch.randn(count, z_dim, generator=torch.Generator().manual_seed(seed))  # (count, z_dim)
    save_grid(to_uint8(generator.eval()(z)), path)


def evaluate(cfg: EvaluateConfig, train_dir: str | Path, data_dir: str | Path,
             featurizer_path: str | Path, metrics_path: str | Path, grid_path: str | Path) -> dict[str, Any]:
    """Score the train stage's ``cfg.generator`` (best or last) with torch-fidelity under the pinned protocol;
    write metrics JSON and a grid."""
    generator, spec = load_generator(trained_generator_path(train_dir, cfg.generator))
    protocol = make_protocol(cfg, data_dir, featurizer_path)
    metrics: dict[str, Any] = score_generator(generator, spec.z_dim, protocol)
    metrics["fid_real_floor"] = score_real_floor(data_dir, protocol)
    metrics["protocol"] = protocol.describe()
    write_json(metrics_path, metrics)
    sample_grid(generator, spec.z_dim, cfg.grid_size, cfg.seed, grid_path)
    return metrics
