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
    Timing,
    onnx_peak_rss_mib,
    parameter_count,
    peak_tensor_mib,
    serialized_bytes,
    time_generators,
)
from ganforge.models import GeneratorSpec, load_generator, save_generator
from ganforge.models.registry import trained_generator_path
from ganforge.optimization.pruning import distill, prune_generator, trained_discriminator
from ganforge.optimization.select import fid_budget, select_winner
from ganforge.runtime.lowering import essential_flops_per_image
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
    JSON records every variant's measurements, and the CSV table holds one row per variant for ``dvc plots``.
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
    bases, distillation = _float_bases(names, steps, teacher, spec, train_dir, cfg)
    notes |= {"distillation": distillation} if distillation is not None else {}
    batches = sorted(set(cfg.speed_batches) | {1, cfg.batch})  # batch 1 gives the latency
    modules, build_s, failed = _build_variants(names, steps, bases, cfg, spec.z_dim, threads, batches)
    names = [name for name in names if name not in failed]
    notes |= {"failed": failed} if failed else {}
    timings, ceiling = _time_variants(modules, spec.z_dim, batches, cfg)

    rows = {name: _variant_row(name, modules[name], bases[name], spec.z_dim, timings, cfg.batch, ceiling,
                               build_s[name], protocol)
            for name in tqdm(names, desc="optimize: FID and memory per variant", unit="variant")}
    if "int8" in modules:
        notes["int8_float_layers"] = float_layers(modules["int8"])

    baseline = rows[BASELINE]
    winner, budget = _select(rows, modules, spec.z_dim, cfg, inception, notes)

    metrics = {
        "winner": winner, "winner_speedup": rows[winner]["speedup"], "winner_img_per_s": rows[winner]["img_per_s"],
        "baseline_img_per_s": baseline["img_per_s"], "winner_fid": rows[winner]["fid"],
        "baseline_fid": baseline["fid"], "fid_budget": budget, "macs_ratio": rows[winner]["macs"] / baseline["macs"],
        "gemm_gflops": ceiling, "batch": cfg.batch, "ceiling_batch": batches[-1], "threads": threads,
        "variants": rows, **notes,
    }
    # The package stage reads everything it needs from here: the winner, the trained baseline beside it, and
    # these measurements (its model card's speed table and the FID its ONNX export must reproduce).
    with atomic_dir(out_dir) as tmp:
        save_generator(bases[winner], dataclasses.replace(spec, pruned="pruned" in steps[winner]), tmp / WINNER_FILE)
        save_generator(teacher, spec, tmp / BASELINE_FILE)
        write_json(tmp / RECIPE_FILE, recipe(winner, cfg).to_dict())
        write_json(tmp / REPORT_FILE, metrics | {"protocol": protocol.describe()})
    write_json(metrics_path, metrics)
    write_table(table_path, rows, {name: f"{kind}: {why}" for kind in ("skipped", "failed")
                                   for name, why in notes.get(kind, {}).items()})
    return metrics


def _float_bases(names: list[str], steps: dict[str, tuple[str, ...]], teacher: nn.Module, spec: GeneratorSpec,
                 train_dir: str | Path, cfg: OptimizeConfig) -> tuple[dict[str, nn.Module], dict | None]:
    """The float weights each variant is built from: the trained generator, or for ``pruned`` variants its
    pruned and distilled copy (made once); and the distillation's record (None without pruned variants)."""
    bases = {name: teacher for name in names}
    if not any("pruned" in steps[name] for name in names):
        return bases, None
    pruned = prune_generator(teacher, spec.z_dim, cfg.prune_ratio, cfg.prune_importance)
    distillation = distill(pruned, teacher, trained_discriminator(train_dir, spec), spec.z_dim, cfg, cfg.seed)
    return bases | {name: pruned for name in names if "pruned" in steps[name]}, distillation


def _build_variants(names: list[str], steps: dict[str, tuple[str, ...]], bases: dict[str, nn.Module],
                    cfg: OptimizeConfig, z_dim: int, threads: int, batches: list[int]) -> tuple[dict, dict, dict]:
    """(modules, build seconds, why each failed) of the variants; a compiled one is compiled for every timed
    batch now, so timing sees no compilation. Only the baseline failing is fatal."""
    modules, build_s, failed = {}, {}, {}
    for name in tqdm(names, desc="optimize: building variants", unit="variant"):
        start = time.perf_counter()
        try:
            modules[name] = build_variant(recipe(name, cfg), bases[name], z_dim, threads=threads)
            if "compiled" in steps[name]:
                with torch.inference_mode():
                    for batch in batches:
                        modules[name](torch.zeros(batch, z_dim))
        except Exception as error:  # noqa: BLE001 - a variant this machine cannot build is reported, not fatal
            if name == BASELINE:
                raise
            modules.pop(name, None)
            failed[name] = failure_reason(error)
            continue
        build_s[name] = time.perf_counter() - start
    return modules, build_s, failed


def _time_variants(modules: dict[str, nn.Module], z_dim: int, batches: list[int],
                   cfg: OptimizeConfig) -> tuple[dict[int, dict[str, Timing]], float]:
    """Every variant's timing at every batch, side by side, and the fp32 GEMM ceiling in GFLOP/s, timed round
    by round with the variants at the largest batch, the one compared with it."""
    probe = GemmProbe()
    timings = {batch: time_generators(modules | ({_CEILING: probe} if batch == batches[-1] else {}), z_dim,
                                      batch, cfg.warmup, cfg.repeats, seed=cfg.seed)
               for batch in batches}
    return timings, probe.gflops(timings[batches[-1]].pop(_CEILING))


def _variant_row(name: str, module: nn.Module, base: nn.Module, z_dim: int, timings: dict[int, dict[str, Timing]],
                 deploy_batch: int, ceiling: float, build_s: float, protocol: Protocol) -> dict[str, Any]:
    """One variant's measurements: images/s per batch, latency, size, memory, rate against the ceiling, FID."""
    flops, largest = essential_flops_per_image(base, z_dim), max(timings)
    at_deploy, at_largest = timings[deploy_batch][name], timings[largest][name]
    return {
        "img_per_s": at_deploy.img_per_s,
        "img_per_s_min": at_deploy.img_per_s_min,
        "img_per_s_max": at_deploy.img_per_s_max,
        **{f"img_per_s_batch{batch}": timings[batch][name].img_per_s for batch in sorted(timings)},
        "latency_ms_batch1": timings[1][name].ms_per_batch,
        "macs": flops // 2,
        "params": parameter_count(base),
        "size_bytes": len(module.onnx_bytes) if isinstance(module, OnnxRuntimeGenerator)
        else serialized_bytes(_eager(module)),
        "peak_mem_mib": _peak_memory(module, z_dim, largest),
        "gflops": flops * at_largest.img_per_s / 1e9,
        "ceiling_fraction": flops * at_largest.img_per_s / 1e9 / ceiling,
        "build_s": build_s,
        **_score(module, z_dim, protocol),
    }


def _select(rows: dict[str, dict[str, Any]], modules: dict[str, nn.Module], z_dim: int, cfg: OptimizeConfig,
            inception: Protocol | None, notes: dict[str, Any]) -> tuple[str, float]:
    """(winner, FID budget): the fastest variant within the budget, in Inception units when ``inception`` is
    given. Adds each row's speed-up over the baseline, and to ``notes`` the Inception record and any fallback."""
    for row in rows.values():
        row["speedup"] = row["img_per_s"] / rows[BASELINE]["img_per_s"]
    budget = fid_budget(rows[BASELINE]["fid"], cfg.max_fid_increase)
    winner = select_winner({n: r["img_per_s"] for n, r in rows.items()}, {n: r["fid"] for n, r in rows.items()},
                           BASELINE, budget)
    if inception is not None:
        start = time.perf_counter()
        winner, notes["inception"] = inception_winner(rows, modules, z_dim, budget, cfg, inception)
        notes["inception"]["seconds"] = time.perf_counter() - start
    notes |= _fallback_note(rows, budget, cfg.max_fid_increase)
    return winner, budget


def _fallback_note(rows: dict[str, dict[str, Any]], budget: float, max_fid_increase: float) -> dict[str, str]:
    """``{"fallback": why}`` when no variant met the FID budget (the baseline wins), else nothing."""
    over_budget = {name: row["fid"] for name, row in rows.items() if name != BASELINE and row["fid"] > budget}
    if not over_budget or len(over_budget) < len(rows) - 1:
        return {}
    return {"fallback": f"no variant met the FID budget {budget:.3f} (baseline {rows[BASELINE]['fid']:.3f} "
                        f"x {1 + max_fid_increase:g}): "
                        + ", ".join(f"{name} {fid:.3f}" for name, fid in over_budget.items())
                        + f"; falling back to the baseline {BASELINE}"}


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
