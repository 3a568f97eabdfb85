"""The optimize stage's library function: build each variant, measure its speed and FID, pick the winner."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ganforge.config import EvaluateConfig, OptimizeConfig, ReferenceConfig
from ganforge.evaluation.protocol import make_protocol, score_generator
from ganforge.files import atomic_dir, atomic_path, write_json
from ganforge.models import load_generator, save_generator
from ganforge.models.registry import trained_generator_path
from ganforge.optimization.benchmark import parameter_count, serialized_bytes, time_generators
from ganforge.optimization.select import fid_budget, select_winner
from ganforge.optimization.variants import Recipe, build_variant, float_layers, fold_batchnorm

BASELINE = "fp32"


def optimize(cfg: OptimizeConfig, eval_cfg: EvaluateConfig, reference_cfg: ReferenceConfig, train_dir: str | Path,
             featurizer_path: str | Path, reference_dir: str | Path, out_dir: str | Path, metrics_path: str | Path,
             table_path: str | Path) -> dict[str, Any]:
    """Measure every variant in ``cfg.variants`` (plus the fp32 baseline) and write the winner to ``out_dir``.

    ``out_dir`` receives the float weights and ``recipe.json``; the metrics JSON records every variant's
    images/s, latency, size and FID, and the CSV table holds one row per variant for ``dvc plots``.
    """
    generator, spec = load_generator(trained_generator_path(train_dir, eval_cfg.generator))
    protocol = make_protocol(eval_cfg, reference_cfg, reference_dir, featurizer_path)
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)

    names = [BASELINE] + [v for v in cfg.variants if v != BASELINE]
    modules = {name: build_variant(_recipe(name, cfg), generator, spec.z_dim) for name in names}
    at_batch = time_generators(modules, spec.z_dim, cfg.batch, cfg.warmup, cfg.repeats, seed=cfg.seed)
    at_one = time_generators(modules, spec.z_dim, 1, cfg.warmup, cfg.repeats, seed=cfg.seed)
    folded = fold_batchnorm(generator)
    rows: dict[str, dict[str, Any]] = {}
    for name, module in tqdm(modules.items(), desc="optimize: FID per variant", unit="variant"):
        rows[name] = {
            "img_per_s": at_batch[name].img_per_s,
            "img_per_s_min": at_batch[name].img_per_s_min,
            "img_per_s_max": at_batch[name].img_per_s_max,
            "latency_ms_batch1": at_one[name].ms_per_batch,
            "params": parameter_count(generator if name == BASELINE else folded),
            "size_bytes": serialized_bytes(module),
            **score_generator(module, spec.z_dim, protocol),
        }
    notes = {"int8_float_layers": float_layers(modules["int8"])} if "int8" in modules else {}

    baseline = rows[BASELINE]
    for row in rows.values():
        row["speedup"] = row["img_per_s"] / baseline["img_per_s"]
    budget = fid_budget(baseline["fid"], cfg.max_fid_increase)
    winner = select_winner({n: r["img_per_s"] for n, r in rows.items()}, {n: r["fid"] for n, r in rows.items()},
                           BASELINE, budget)
    winner_recipe = _recipe(winner, cfg)

    with atomic_dir(out_dir) as tmp:
        save_generator(generator, spec, tmp / "generator.safetensors")
        write_json(tmp / "recipe.json", winner_recipe.to_dict())

    metrics = {
        "winner": winner,
        "winner_speedup": rows[winner]["speedup"],
        "winner_img_per_s": rows[winner]["img_per_s"],
        "winner_fid": rows[winner]["fid"],
        "baseline_fid": baseline["fid"],
        "fid_budget": budget,
        "batch": cfg.batch,
        "threads": threads,
        "variants": rows,
        **notes,
    }
    write_json(metrics_path, metrics)
    write_table(table_path, rows)
    return metrics


def _recipe(variant: str, cfg: OptimizeConfig) -> Recipe:
    return Recipe(variant, calibration_seed=cfg.seed, calibration_batches=cfg.calibration_batches,
                  calibration_batch_size=cfg.batch, quantization_backend=cfg.int8_backend)


def write_table(path: str | Path, rows: dict[str, dict[str, Any]]) -> None:
    """One CSV row per variant: the FID-against-images/s table that ``dvc plots`` draws."""
    columns = ["variant", "img_per_s", "speedup", "fid", "latency_ms_batch1", "size_bytes", "params"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for name, row in rows.items():
            writer.writerow([name] + [_round(row[c]) for c in columns[1:]])


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value
