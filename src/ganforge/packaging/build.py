"""The package stage's library function: build ``dist/generator`` from the optimize stage's winner, gated on
ONNX parity, with its model card and hash manifest (the layout is in :mod:`ganforge.packaging.package`)."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganforge import __version__
from ganforge.config import PackageConfig, config_to_dict
from ganforge.contracts import BASELINE_FILE, RECIPE_FILE, REPORT_FILE, WINNER_FILE
from ganforge.data.prepared import read_manifest
from ganforge.errors import UserError
from ganforge.evaluation.protocol import Protocol, score_onnx_generator
from ganforge.files import POSITIVE, Each, atomic_dir, check_json, read_json, sha256_file, shown, write_json
from ganforge.images import save_grid, to_uint8
from ganforge.latents import latents
from ganforge.measurement.speed import parameter_count
from ganforge.models import GeneratorSpec, load_generator
from ganforge.models.registry import save_weights
from ganforge.packaging.card import model_card
from ganforge.packaging.package import (
    BASELINE_ONNX,
    BASELINE_WEIGHTS,
    CARD,
    CONFIG,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    ONNX,
    SAMPLES,
    WEIGHTS,
)
from ganforge.runtime.onnx import export_onnx, onnx_session, run_onnx
from ganforge.runtime.variants import BASELINE, Recipe, build_variant, fold_batchnorm

# What the package stage reads of the optimize report and the data manifest: its FID gate and the model card.
_QUALITY = ("fid", "kid_mean", "isc_mean", "precision", "recall")
_REPORT_SHAPE = {"batch": int, "fid_budget": float, "threads": int, "gemm_gflops": float,
                 "variants": Each({key: float for key in (*_QUALITY, "img_per_s", "macs", "params")})}
_BATCH_KEY = re.compile("img_per_s_batch([0-9]{1,9})")


def read_report(path: Path, variant: str) -> dict[str, Any]:
    """The optimize stage's report at ``path``, checked for every field the package reads; the recipe's
    ``variant`` and ``fp32`` must be among its variants, each with the speeds measured for ``variant``."""
    report = read_json(path)
    check_json(report, _REPORT_SHAPE, str(path))
    rows = report["variants"]
    for name in dict.fromkeys((variant, BASELINE)):
        if name not in rows:
            raise UserError(f"{path}: variants.{name}: missing (the recipe's variant and {BASELINE} are needed)")
    check_json(rows[BASELINE]["img_per_s"], POSITIVE, str(path), f"variants.{BASELINE}.img_per_s")
    if not math.isfinite(rows[variant]["fid"]):
        raise UserError(f"{path}: variants.{variant}.fid: expected a finite FID, got {rows[variant]['fid']}")
    batches = [key for key in rows[variant] if key.startswith("img_per_s_batch")]
    for key in batches:
        if not _BATCH_KEY.fullmatch(key):
            raise UserError(f"{path}: variants.{variant}.{shown(key)}: not img_per_s_batch<batch size>")
    check_json(rows, Each({key: float for key in batches}), str(path), "variants")
    return report


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _export_checked(generator: nn.Module, spec: GeneratorSpec, path: Path, cfg: PackageConfig) -> float:
    """Export the BN-folded float ``generator`` to ``path``; return the max |onnx - torch| on the parity
    latents, failing the stage when it exceeds the tolerance."""
    folded = fold_batchnorm(generator)
    export_onnx(folded, spec.z_dim, path, cfg.onnx_opset)
    z = latents(cfg.seed, 0, cfg.parity_batch, spec.z_dim)  # (parity_batch, z_dim)
    with torch.inference_mode():
        torch_out = folded(z)
    max_abs_diff = float((run_onnx(onnx_session(path), z) - torch_out).abs().max())
    if max_abs_diff > cfg.parity_max_abs_diff:
        raise UserError(f"{path.name}: ONNX parity failed, max |onnx - torch| = {max_abs_diff:.3g} exceeds "
                        f"package.parity_max_abs_diff = {cfg.parity_max_abs_diff}")
    return max_abs_diff


def _check_fid_parity(onnx_fid: float, evaluated_fid: float, cfg: PackageConfig) -> float:
    """Relative FID gap between the packaged ONNX model and the winner as optimize scored it."""
    gap = abs(onnx_fid - evaluated_fid) / max(evaluated_fid, 1e-12)
    if gap > cfg.parity_max_fid_rel_diff:
        raise UserError(f"{ONNX}: FID parity failed, ONNX FID {onnx_fid:.4f} vs evaluated {evaluated_fid:.4f} "
                        f"(relative gap {gap:.3g} exceeds package.parity_max_fid_rel_diff = "
                        f"{cfg.parity_max_fid_rel_diff})")
    return gap


def _package_config(spec: GeneratorSpec, recipe: Recipe) -> dict[str, Any]:
    """config.json of a package: its format, the generator, the recipe and how to read its input and output."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "generator": spec.to_dict(),
        "recipe": recipe.to_dict(),
        "output": {"range": [-1.0, 1.0], "to_uint8": "round((x + 1) * 127.5)", "layout": "NCHW"},
        "latents": {"distribution": "standard normal", "truncation": "optional: normal truncated at ±psi"},
        "onnx": {"file": ONNX, "graph": "batchnorm-folded float32", "input": "z", "output": "images"},
    }


def _write_baseline(optimized_dir: Path, tmp: Path, cfg: PackageConfig) -> dict[str, Any]:
    """Write the trained generator beside the winner (weights and a parity-checked ONNX); its config.json entry."""
    baseline, baseline_spec = load_generator(optimized_dir / BASELINE_FILE)
    save_weights(baseline, tmp / BASELINE_WEIGHTS, {"spec": baseline_spec.to_dict()})
    _export_checked(baseline, baseline_spec, tmp / BASELINE_ONNX, cfg)
    return {"generator": baseline_spec.to_dict(), "weights": BASELINE_WEIGHTS, "onnx": BASELINE_ONNX}


def write_package(cfg: PackageConfig, protocol: Protocol, optimized_dir: str | Path, data_dir: str | Path,
                  out_dir: str | Path, metrics_path: str | Path) -> dict[str, Any]:
    """Build the package from the optimize stage's winner, gate it on ONNX parity (pixels, and FID re-scored
    under ``protocol``), write its model card, and swap it into ``out_dir`` atomically.

    A failed gate raises :class:`UserError` and leaves the previous package untouched.
    """
    optimized_dir = Path(optimized_dir)
    generator, spec = load_generator(optimized_dir / WINNER_FILE)
    recipe = Recipe.from_dict(read_json(optimized_dir / RECIPE_FILE), source=str(optimized_dir / RECIPE_FILE))
    report = read_report(optimized_dir / REPORT_FILE, recipe.variant)
    evaluated = report["variants"][recipe.variant]
    data = read_manifest(data_dir)

    with atomic_dir(out_dir) as tmp:
        save_weights(generator, tmp / WEIGHTS, {"spec": spec.to_dict()})
        max_abs_diff = _export_checked(generator, spec, tmp / ONNX, cfg)
        onnx_scores = score_onnx_generator(tmp / ONNX, spec.z_dim, protocol)
        fid_gap = _check_fid_parity(onnx_scores["fid"], evaluated["fid"], cfg)
        config = _package_config(spec, recipe)
        if cfg.include_baseline:
            config["baseline"] = _write_baseline(optimized_dir, tmp, cfg)
        write_json(tmp / CONFIG, config)
        with torch.inference_mode():
            grid_images = to_uint8(build_variant(recipe, generator, spec.z_dim, runtime=False)(
                latents(cfg.seed, 0, cfg.grid_size, spec.z_dim)))
        save_grid(grid_images, tmp / SAMPLES)
        parity = {"onnx_max_abs_diff": max_abs_diff, "onnx_fid": onnx_scores["fid"], "evaluated_fid": evaluated["fid"],
                  "fid_rel_diff": fid_gap}
        (tmp / CARD).write_text(model_card(spec, recipe, report, data, parity, protocol.describe(),
                                           parameter_count(generator), cfg))
        files = sorted(p.name for p in tmp.iterdir())
        package_bytes, onnx_bytes = sum((tmp / name).stat().st_size for name in files), (tmp / ONNX).stat().st_size
        write_json(tmp / MANIFEST, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                    "ganforge_version": __version__, "git_commit": _git_commit(),
                                    "files": {name: sha256_file(tmp / name) for name in files},
                                    "params": config_to_dict(cfg)})

    metrics = {
        **parity,
        "variant": recipe.variant,
        "package_bytes": package_bytes,
        "onnx_bytes": onnx_bytes,
    }
    write_json(metrics_path, metrics)
    return metrics
