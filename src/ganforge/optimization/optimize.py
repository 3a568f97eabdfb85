"""The optimize stage's library function: build each variant, measure it, pick the fastest within the FID
budget. Nothing is assumed: every variant is timed on the machine that runs the stage, side by side."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from ganforge.config import EvaluateConfig, OptimizeConfig, ReferenceConfig
from ganforge.contracts import BASELINE_FILE, RECIPE_FILE, REPORT_FILE, WINNER_FILE
from ganforge.errors import UserError
from ganforge.evaluation.fidelity import INCEPTION_EXTRACTOR
from ganforge.evaluation.protocol import Protocol, figure_suffix, make_protocol, score_generator, score_onnx_generator
from ganforge.files import atomic_dir, atomic_path, write_json
from ganforge.measurement.ceilings import GemmProbe
from ganforge.measurement.speed import (
    flops_per_image,
    onnx_peak_rss_mib,
    parameter_count,
    peak_tensor_mib,
    serialized_bytes,
    time_generators,
)
from ganforge.models import load_generator, save_generator
from ganforge.models.registry import trained_generator_path
from ganforge.optimization.pruning import distill, prune_generator, trained_discriminator
from ganforge.optimization.select import fid_budget, select_winner
from ganforge.runtime.variants import (
    BASELINE,
    OnnxRuntimeGenerator,
    Recipe,
    build_variant,
    float_layers,
    reduced_precision_support,
    variant_steps,
)

_CEILING = "fp32 GEMM ceiling"  # the probe's name among the timed modules (no variant can be named so)
TABLE_COLUMNS = ["variant", "img_per_s", "speedup", "fid", "latency_ms_batch1", "macs", "params", "size_bytes",
                 "peak_mem_mib", "gflops", "ceiling_fraction", "build_s", "status"]


def optimize(cfg: OptimizeConfig, eval_cfg: EvaluateConfig, reference_cfg: ReferenceConfig, train_dir: str | Path,
             featurizer_path: str | Path, reference_dir: str | Path, out_dir: str | Path, metrics_path: str | Path,
             table_path: str | Path) -> dict[str, Any]:
    """Measure every variant in ``cfg.variants`` (plus the fp32 baseline) and write the winner to ``out_dir``.

    ``out_dir`` receives the winner's float weights (pruned ones with their smaller shapes), the trained
    baseline's, ``recipe.json`` and ``optimize.json`` (these metrics with the scoring protocol); the metrics
    JSON records every variant's measurements, and the CSV table holds one row
    per variant for ``dvc plots``.
    """
    if cfg.fid_units == "inception" and reference_cfg.feature_extractor != INCEPTION_EXTRACTOR:
        raise UserError(f"optimize.fid_units: inception needs reference.feature_extractor {INCEPTION_EXTRACTOR}; "
                        f"it is {reference_cfg.feature_extractor!r}")
    names = [BASELINE] + [v for v in dict.fromkeys(cfg.variants) if v != BASELINE]
    steps = {name: variant_steps(name, "optimize.variants") for name in names}
    teacher, spec = load_generator(trained_generator_path(train_dir, eval_cfg.generator))
    protocol = make_protocol(eval_cfg, reference_cfg, reference_dir, featurizer_path)
    inception = (make_protocol(eval_cfg, reference_cfg, reference_dir, featurizer_path, INCEPTION_EXTRACTOR)
                 if cfg.fid_units == "inception" else None)  # checked before any variant is built
    threads = cfg.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)

    skipped = {name: why for name in names for step in steps[name] if step in ("bf16", "fp16")
               if (why := reduced_precision_support(step))}
    names = [name for name in names if name not in skipped]
    notes: dict[str, Any] = {"skipped": skipped} if skipped else {}
    bases = {name: teacher for name in names}
    if any("pruned" in steps[name] for name in names):
        pruned = prune_generator(teacher, spec.z_dim, cfg.prune_ratio, cfg.prune_importance)
        notes["distillation"] = distill(pruned, teacher, trained_discriminator(train_dir, spec), spec.z_dim, cfg,
                                        cfg.seed)
        bases |= {name: pruned for name in names if "pruned" in steps[name]}

    batches = sorted(set(cfg.speed_batches) | {1, cfg.batch})  # batch 1 gives the latency
    modules, build_s, failed = {}, {}, {}
    for name in tqdm(names, desc="optimize: building variants", unit="variant"):
        start = time.perf_counter()
        try:
            modules[name] = build_variant(recipe(name, cfg), bases[name], spec.z_dim, threads=threads)
            if "compiled" in steps[name]:
                with torch.inference_mode():  # compile for every timed shape now, so timing sees no compilation
                    for batch in batches:
                        modules[name](torch.zeros(batch, spec.z_dim))
        except Exception as error:  # noqa: BLE001 - a variant this machine cannot build is reported, not fatal
            if name == BASELINE:
                raise
            modules.pop(name, None)
            failed[name] = failure_reason(error)
            continue
        build_s[name] = time.perf_counter() - start
    names = [name for name in names if name not in failed]
    notes |= {"failed": failed} if failed else {}
    probe = GemmProbe()  # the ceiling, timed round by round with the variants at the batch compared with it
    timings = {batch: time_generators(modules | ({_CEILING: probe} if batch == batches[-1] else {}), spec.z_dim,
                                      batch, cfg.warmup, cfg.repeats, seed=cfg.seed)
               for batch in batches}
    ceiling = probe.gflops(timings[batches[-1]].pop(_CEILING))

    rows: dict[str, dict[str, Any]] = {}
    for name in tqdm(names, desc="optimize: FID and memory per variant", unit="variant"):
        module, flops = modules[name], flops_per_image(bases[name], spec.z_dim)
        at_deploy, at_largest = timings[cfg.batch][name], timings[batches[-1]][name]
        rows[name] = {
            "img_per_s": at_deploy.img_per_s,
            "img_per_s_min": at_deploy.img_per_s_min,
            "img_per_s_max": at_deploy.img_per_s_max,
            **{f"img_per_s_batch{batch}": timings[batch][name].img_per_s for batch in batches},
            "latency_ms_batch1": timings[1][name].ms_per_batch,
            "macs": flops // 2,
            "params": parameter_count(bases[name]),
            "size_bytes": len(module.onnx_bytes) if isinstance(module, OnnxRuntimeGenerator)
            else serialized_bytes(_eager(module)),
            "peak_mem_mib": _peak_memory(module, spec.z_dim, batches[-1]),
            "gflops": flops * at_largest.img_per_s / 1e9,
            "ceiling_fraction": flops * at_largest.img_per_s / 1e9 / ceiling,
            "build_s": build_s[name],
            **_score(module, spec.z_dim, protocol),
        }
    if "int8" in modules:
        notes["int8_float_layers"] = float_layers(modules["int8"])

    baseline = rows[BASELINE]
    for row in rows.values():
        row["speedup"] = row["img_per_s"] / baseline["img_per_s"]
    budget = fid_budget(baseline["fid"], cfg.max_fid_increase)
    winner = select_winner({n: r["img_per_s"] for n, r in rows.items()}, {n: r["fid"] for n, r in rows.items()},
                           BASELINE, budget)
    if inception is not None:
        start = time.perf_counter()
        winner, notes["inception"] = inception_winner(rows, modules, spec.z_dim, budget, cfg, inception)
        notes["inception"]["seconds"] = time.perf_counter() - start
    over_budget = {name: row["fid"] for name, row in rows.items() if name != BASELINE and row["fid"] > budget}
    if over_budget and len(over_budget) == len(rows) - 1:
        notes["fallback"] = (f"no variant met the FID budget {budget:.3f} (baseline {baseline['fid']:.3f} "
                             f"x {1 + cfg.max_fid_increase:g}): "
                             + ", ".join(f"{name} {fid:.3f}" for name, fid in over_budget.items())
                             + f"; falling back to the baseline {BASELINE}")

    metrics = {
        "winner": winner,
        "winner_speedup": rows[winner]["speedup"],
        "winner_img_per_s": rows[winner]["img_per_s"],
        "baseline_img_per_s": baseline["img_per_s"],
        "winner_fid": rows[winner]["fid"],
        "baseline_fid": baseline["fid"],
        "fid_budget": budget,
        "macs_ratio": rows[winner]["macs"] / baseline["macs"],
        "gemm_gflops": ceiling,
        "batch": cfg.batch,
        "ceiling_batch": batches[-1],
        "threads": threads,
        "variants": rows,
        **notes,
    }
    # The package stage reads everything it needs from here: the winner, the trained baseline beside it, and
    # these measurements (its model card's speed table and the FID its ONNX export must reproduce).
    with atomic_dir(out_dir) as tmp:
        save_generator(bases[winner], dataclasses.replace(spec, pruned="pruned" in steps[winner]),
                       tmp / WINNER_FILE)
        save_generator(teacher, spec, tmp / BASELINE_FILE)
        write_json(tmp / RECIPE_FILE, recipe(winner, cfg).to_dict())
        write_json(tmp / REPORT_FILE, metrics | {"protocol": protocol.describe()})
    write_json(metrics_path, metrics)
    write_table(table_path, rows, {name: f"skipped: {why}" for name, why in skipped.items()}
                | {name: f"failed: {why}" for name, why in failed.items()})
    return metrics


def inception_winner(rows: dict[str, dict[str, Any]], modules: dict[str, nn.Module], z_dim: int,
                     domain_budget: float, cfg: OptimizeConfig, protocol: Protocol) -> tuple[str, dict[str, Any]]:
    """The fastest variant within the FID budget in Inception units. Variants are screened in domain units
    first (``domain_budget``); the baseline and then the screened variants, fastest first, are scored in
    Inception units until one meets the budget, so Inception runs for two variants when the fastest holds."""
    suffix = figure_suffix(INCEPTION_EXTRACTOR, protocol.num_samples)
    fid = {BASELINE: _score(modules[BASELINE], z_dim, protocol)["fid"]}
    budget = fid_budget(fid[BASELINE], cfg.max_fid_increase)
    screened = sorted((n for n, r in rows.items() if n != BASELINE and r["fid"] <= domain_budget),
                      key=lambda n: rows[n]["img_per_s"], reverse=True)
    winner = BASELINE
    for name in tqdm(screened, desc="optimize: Inception FID, fastest first", unit="variant"):
        fid[name] = _score(modules[name], z_dim, protocol)["fid"]
        if fid[name] <= budget:
            winner = name
            break
    if rows[winner]["img_per_s"] < rows[BASELINE]["img_per_s"]:
        winner = BASELINE
    record = {f"fid_{suffix}": fid, f"fid_budget_{suffix}": budget, f"winner_fid_{suffix}": fid[winner],
              "protocol": protocol.describe()}
    return winner, record


def recipe(variant: str, cfg: OptimizeConfig) -> Recipe:
    """The recipe of ``variant`` under the optimize params (pruning settings only for pruned variants)."""
    pruned = "pruned" in variant_steps(variant)
    return Recipe(variant, calibration_seed=cfg.seed, calibration_batches=cfg.calibration_batches,
                  calibration_batch_size=cfg.batch, quantization_backend=cfg.int8_backend,
                  prune_ratio=cfg.prune_ratio if pruned else None,
                  prune_importance=cfg.prune_importance if pruned else None,
                  finetune_kimg=cfg.finetune_kimg if pruned else None)


def _eager(module: nn.Module) -> nn.Module:
    return getattr(module, "_orig_mod", module)  # torch.compile's wrapper keeps the eager module here


def _peak_memory(module: nn.Module, z_dim: int, batch: int) -> float:
    """Peak MiB of one call at ``batch``. A compiled variant reports its eager form's: the profiler sees a
    compiled graph as one call that returns its output, not the buffers allocated inside it."""
    if isinstance(module, OnnxRuntimeGenerator):
        return onnx_peak_rss_mib(module.onnx_bytes, z_dim, batch, module.threads)
    return peak_tensor_mib(_eager(module), z_dim, batch)


def _score(module: nn.Module, z_dim: int, protocol: Protocol) -> dict[str, float]:
    if not isinstance(module, OnnxRuntimeGenerator):
        return score_generator(module, z_dim, protocol)
    with tempfile.TemporaryDirectory(prefix="ganforge-score-") as tmp:  # through torch-fidelity's ONNX model
        path = Path(tmp) / "generator.onnx"
        path.write_bytes(module.onnx_bytes)
        return score_onnx_generator(path, z_dim, protocol)


def summary_lines(metrics: dict[str, Any], out_dir: str | Path) -> list[str]:
    """What the optimize stage prints: the winner, then any fallback, skipped or failed variant, one line each."""
    lines = [f"optimize: winner {metrics['winner']} at {metrics['winner_img_per_s']:.0f} img/s "
             f"({metrics['winner_speedup']:.2f}x fp32), FID {metrics['winner_fid']:.3f} "
             f"(budget {metrics['fid_budget']:.3f}) -> {out_dir}"]
    if "fallback" in metrics:
        lines.append(f"optimize: {metrics['fallback']}")
    lines += [f"optimize: skipped {name}: {why}" for name, why in metrics.get("skipped", {}).items()]
    lines += [f"optimize: {name} failed to build: {why}" for name, why in metrics.get("failed", {}).items()]
    return lines


def failure_reason(error: Exception) -> str:
    """One line saying why a variant failed to build: the error's type and the first line of its message."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else "(no message)"
    return message if isinstance(error, UserError) else f"{type(error).__name__}: {message}"


def write_table(path: str | Path, rows: dict[str, dict[str, Any]], not_measured: dict[str, str] | None = None) -> None:
    """One CSV row per variant: the FID-against-images/s table that ``dvc plots`` draws. Variants that were
    skipped or failed to build get a row too, with empty figures and the reason in ``status``."""
    measured = [[name] + [_round(row[c]) for c in TABLE_COLUMNS[1:-1]] + ["ok"] for name, row in rows.items()]
    unmeasured = [[name] + [None] * (len(TABLE_COLUMNS) - 2) + [status]
                  for name, status in (not_measured or {}).items()]
    table = pd.DataFrame(measured + unmeasured, columns=TABLE_COLUMNS)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value
