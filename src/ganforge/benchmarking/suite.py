"""``ganforge bench``: every benchmark section in one run, written to ``bench/results.json``, and the tables of
docs/benchmarks.md regenerated from it (its ``bench`` and ``targets`` sections), the latter listing every
target of the project with its latest measured value, marked met or missed."""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ganforge.benchmarking import sections
from ganforge.benchmarking.page import write_doc_section
from ganforge.benchmarking.targets import TARGETS_FILE, Target, load_targets, target_table
from ganforge.errors import UserError
from ganforge.files import POSITIVE, Each, Maybe, atomic_path, check_json, read_json
from ganforge.measurement.ceilings import measure_ceilings
from ganforge.measurement.machine import machine, machine_line
from ganforge.reporting.tables import markdown_table

_SPREAD = {"median": float, "min": float, "max": float}
_RUN = {"wall_s": float, "peak_rss_mib": float}
# What render() and target_lines() read of the results (written by run_bench; `--render` reads them back).
_RESULTS = {
    "machine": {"cpu": str, "cpu_flags": [str], "cores": Maybe(int), "torch": str, "onnxruntime": str,
                "python": str, "torch_threads": int, "cuda_device?": str},
    "quick": bool, "date": str, "wall_s": float,
    "ceilings": {"fp32_gemm_gflops": _SPREAD, "int8_gemm_gops": Maybe(_SPREAD), "memory_bandwidth_gbs": _SPREAD,
                 "cuda_bf16_tflops?": Maybe(_SPREAD | {"median": POSITIVE})},  # generation_cuda divides by it
    "generation": {"batch": int, "winner_skipped?": str, "rows": Each({
        "shape": str, "img_per_s_batch256": float, "img_per_s_batch256_min": float, "img_per_s_batch256_max": float,
        "latency_ms_batch1": float, "vs_seed_fp32": float, "img_per_s_batch256_busy": float,
        "vs_seed_fp32_busy": float, "gflops": float, "ceiling_fraction": float}),
        "winner_vs_baseline?": {"baseline": str, "alone": float, "beside_a_busy_process": float}},
    "generation_cuda?": Maybe({"batch": int, "device": str, "rows": Each({"img_per_s": _SPREAD, "gflops": float})}),
    "training": {"kimg_per_run": float, "archs": Each(_SPREAD),
                 "ddp": {"1_process_2_threads": _SPREAD, "2_processes_1_thread": _SPREAD, "ratio": float}},
    "data": {"prepare": {"files": float, "files_per_s": float}, "loader_img_per_s": _SPREAD,
             "loader_augmented_img_per_s": _SPREAD, "domain_features_img_per_s": _SPREAD},
    "pipeline": {"noop_repro?": _RUN, "noop_repro_skipped?": str, "default_repro?": _RUN,
                 "default_repro_skipped?": str},
}
# What target_lines() reads of each benchmark's JSON in bench/.
_BENCH_FILES = {
    "pipeline_budget": {"repro_default?": _RUN, "test_suite?": {"wall_s": float}},
    "data_path": {"prepare_cifar10_jpeg?": _RUN},
    "time_to_quality": {"lite?": {"fid": float}, "seed?": {"fid": POSITIVE},
                        "summary?": {"best": str, "fid_key": str, "fid": float, "recall": float,
                                     "last_over_best": float, "baseline_fid?": POSITIVE}},
    "time_to_quality_6000": {"summary?": {"best": str, "last_over_best": float}},
    "time_to_quality_60min": {"summary?": {"best": str, "snapshot_key": str, "snapshot_over_best": Each(float)}},
    "featurizer_budget": {"runs?": {"params.yaml": {"wall_s": float, "test_accuracy": float},
                                    "15 epochs": {"test_accuracy": float}}},
    "inception_reference": {"extract_test?": {"img_per_s": float}},
    "evaluation_speed": {"evaluate_stage?": {"wall_s?": float}, "cifar10?": {"fid_10k?": {"wall_s?": float}}},
    "optimize_speed": {"winner_fid_ratio?": float, "best_unpruned_fp32_ceiling_fraction?": float},
    "serve_load": {"winner_vs_baseline?": {"beside_a_busy_process": float},
                   "bulk_winner_vs_baseline?": {"beside_a_busy_process": float}},
    "optimize_cifar": {"best_compressed?": Each({"variant": str, "fid_ratio": float, "speedup_batch256": float})},
}


def check_results(results: Any, source: str) -> None:
    """Check that bench results (from ``source``) hold every field the doc's tables are made of: a wrong type or
    a missing field is a one-line :class:`UserError` naming ``source`` and the field."""
    check_json(results, _RESULTS, source)
    if results.get("generation_cuda") and not results["ceilings"].get("cuda_bf16_tflops"):
        raise UserError(f"{source}: ceilings.cuda_bf16_tflops: missing (generation_cuda is compared with it)")
    for key in ("noop_repro", "default_repro"):
        if key not in results["pipeline"] and f"{key}_skipped" not in results["pipeline"]:
            raise UserError(f"{source}: pipeline.{key}: missing (nor is pipeline.{key}_skipped there)")


def run_bench(repo: str | Path, quick: bool, results_path: str | Path, doc_path: str | Path | None,
              threads: int = 0) -> dict:
    """Measure every section on this machine with ``threads`` intra-op threads (0: all cores) and write
    ``results_path`` (and the doc's tables)."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    repo = Path(repo).resolve()
    if not (repo / "dvc.yaml").is_file() or not (repo / "stages/train.py").is_file():
        raise UserError(f"{repo}: not a ganforge checkout (run `ganforge bench` from the repository root)")
    start = time.perf_counter()
    results: dict[str, Any] = {"machine": machine(), "quick": quick,
                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-") as tmp:
        work = Path(tmp)
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("ceilings", lambda: measure_ceilings(quick)),
            ("generation", lambda: sections.generation(repo / "models/optimized",
                                                       results["ceilings"]["fp32_gemm_gflops"]["median"], quick)),
            ("generation_cuda", lambda: sections.generation_cuda(quick)),
            ("prepare", lambda: sections.prepared_digits(work)),
            ("training", lambda: sections.training(repo, work, quick)),
            ("data", lambda: sections.data_and_evaluation(work, results.pop("prepare"), quick)),
            ("pipeline", lambda: sections.pipeline(repo, quick)),
        ]
        for name, step in steps:
            print(f"bench: {name} ...", flush=True)
            results[name] = step()
    results["wall_s"] = time.perf_counter() - start
    results_path = Path(results_path)
    with atomic_path(results_path) as out:
        out.write_text(json.dumps(results, indent=2) + "\n")
    if doc_path is not None:
        render(results, repo, Path(doc_path), str(results_path))
    return results


def _range(s: dict, digits: int = 0) -> str:
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}–{s['max']:,.{digits}f})"


def _generation_table(rows: dict[str, dict]) -> list[str]:
    """The generation rows as a markdown table, through a DataFrame of the figures."""
    frame = pd.DataFrame.from_dict(rows, orient="index")
    spread = [f"{m:,.0f} ({lo:,.0f}–{hi:,.0f})" for m, lo, hi in
              frame[["img_per_s_batch256", "img_per_s_batch256_min", "img_per_s_batch256_max"]].itertuples(index=False)]
    table = pd.DataFrame({
        "generator": [f"`{name}` eager fp32" if name in ("seed", "lite") else name for name in frame.index],
        "output": frame["shape"], "img/s": spread, "× `seed` fp32": frame["vs_seed_fp32"].map("{:.2f}".format),
        "img/s beside a busy process": frame["img_per_s_batch256_busy"].map("{:,.0f}".format),
        "× `seed` fp32 beside it": frame["vs_seed_fp32_busy"].map("{:.2f}".format),
        "batch-1 ms": frame["latency_ms_batch1"].map("{:.2f}".format), "GFLOP/s": frame["gflops"].map("{:.1f}".format),
        "of fp32 GEMM": frame["ceiling_fraction"].map("{:.1%}".format)})
    return markdown_table(table)


def render(results: Any, repo: Path, doc: Path, source: str = "--results") -> None:
    """Regenerate the ``bench`` and ``targets`` sections of ``doc`` from ``results`` (read from ``source``, which
    error lines name), after checking that it holds every field they use."""
    check_results(results, source)
    m, c = results["machine"], results["ceilings"]
    mode = "`ganforge bench --quick`" if results["quick"] else "`ganforge bench`"
    lines = [machine_line(m) + " onnxruntime "
             f"{m['onnxruntime']}; {m['torch_threads']} threads. {mode}, {results['date']}, {results['wall_s']:.0f} s. "
             "Median of repeats (min–max).", "",
             "| ceiling | measured |", "|---|---|",
             f"| fp32 GEMM (1024³) | {_range(c['fp32_gemm_gflops'])} GFLOP/s |",
             "| int8 GEMM (1024³, `torch._int_mm`) | "
             + (f"{_range(c['int8_gemm_gops'])} GOP/s |" if c["int8_gemm_gops"] else "no kernel on this machine |"),
             f"| memory bandwidth (256 MiB copy, read + write) | {_range(c['memory_bandwidth_gbs'], 1)} GB/s |"]
    if c.get("cuda_bf16_tflops"):
        lines.append(f"| CUDA bf16 matmul ({m.get('cuda_device')}) | {_range(c['cuda_bf16_tflops'], 1)} TFLOP/s |")
    g = results["generation"]
    lines += ["", f"Generation at 32×32, batch {g['batch']} (and batch-1 latency), timed side by side; batch "
              f"{g['batch']} again while a busy-looping process shares the cores:", "", *_generation_table(g["rows"])]
    if "winner_skipped" in g:
        lines.append(f"| optimize winner | skipped: {g['winner_skipped']} ||||||||")
    else:
        w = g["winner_vs_baseline"]
        lines += ["", f"The winner is {w['alone']:.2f}× its baseline (`{w['baseline']}` eager fp32) alone and "
                  f"{w['beside_a_busy_process']:.2f}× beside the busy process."]
    if results.get("generation_cuda"):
        gc = results["generation_cuda"]
        lines += ["", f"On {gc['device']}, batch {gc['batch']}, against the bf16 matrix rate above:", "",
                  "| generator | img/s | GFLOP/s | of bf16 matmul |", "|---|---|---|---|"]
        bf16_rate = c["cuda_bf16_tflops"]["median"] * 1000
        lines += [f"| `{name}` | {_range(r['img_per_s'])} | {r['gflops']:,.0f} | {r['gflops'] / bf16_rate:.1%} |"
                  for name, r in gc["rows"].items()]
    t = results["training"]
    lines += ["", f"Training (the train stage under torchrun, digits at 32×32×3, {t['kimg_per_run']} kimg per run):",
              "", "| run | train img/s |", "|---|---|"]
    lines += [f"| `{arch}`, 1 process | {_range(s)} |" for arch, s in t["archs"].items()]
    lines += [f"| `seed`, 1 process × 2 threads | {_range(t['ddp']['1_process_2_threads'])} |",
              f"| `seed`, 2 gloo processes × 1 thread | {_range(t['ddp']['2_processes_1_thread'])} |",
              f"| DDP ratio (2 processes / 1) | {t['ddp']['ratio']:.2f} |"]
    d = results["data"]
    lines += ["", "Data and evaluation (digits at 32×32×3):", "", "| what | figure |", "|---|---|",
              f"| prepare ({d['prepare']['files']:,} files) | {d['prepare']['files_per_s']:,.0f} files/s |",
              f"| data loader, batches of 64 | {_range(d['loader_img_per_s'])} img/s |",
              f"| + DiffAugment `color,translation,cutout` | {_range(d['loader_augmented_img_per_s'])} img/s |",
              f"| domain features, batch 250 | {_range(d['domain_features_img_per_s'])} img/s |"]
    p = results["pipeline"]
    lines += ["", "| pipeline | wall time | peak memory |", "|---|---|---|"]
    for key, label in (("noop_repro", "no-op `dvc repro`"), ("default_repro", "default `dvc repro` from scratch")):
        if key in p:
            lines.append(f"| {label} | {p[key]['wall_s']:.1f} s | {p[key]['peak_rss_mib']:.0f} MiB |")
        else:
            lines.append(f"| {label} | skipped: {p[key + '_skipped']} | |")
    write_doc_section(doc, "bench", lines)
    write_doc_section(doc, "targets", target_lines(results, repo / "bench"))


def _load(bench_dir: Path, name: str) -> dict | None:
    """A benchmark's JSON in ``bench_dir``, checked for what :func:`target_lines` reads; None when not run."""
    path = bench_dir / f"{name}.json"
    if not path.exists():
        return None
    measured = read_json(path)
    check_json(measured, _BENCH_FILES[name], str(path))
    return measured


def _pipeline_and_data_rows(t: dict[str, Target], results: dict, bench_dir: Path) -> list[dict[str, str]]:
    p, d = results["pipeline"], results["data"]
    budget = _load(bench_dir, "pipeline_budget") or {}
    repro = p.get("default_repro") or budget.get("repro_default")
    by = "`ganforge bench`" if "default_repro" in p else None
    suite, data = budget.get("test_suite"), (_load(bench_dir, "data_path") or {}).get("prepare_cifar10_jpeg")
    return [t["default_repro_minutes"].row(repro and repro["wall_s"] / 60, by=by),
            t["default_repro_peak_gb"].row(repro and repro["peak_rss_mib"] / 1024, by=by),
            t["test_suite_minutes"].row(suite and suite["wall_s"] / 60),
            t["prepare_cifar_s"].row(data and data["wall_s"]),
            t["prepare_cifar_peak_gb"].row(data and data["peak_rss_mib"] / 1024),
            t["loader_img_per_s"].row(d["loader_img_per_s"]["median"]),
            t["loader_augmented_img_per_s"].row(d["loader_augmented_img_per_s"]["median"]),
            t["domain_extractor_img_per_s"].row(d["domain_features_img_per_s"]["median"]),
            t["ddp_ratio"].row(results["training"]["ddp"]["ratio"])]


def _quality_rows(t: dict[str, Target], bench_dir: Path) -> list[dict[str, str]]:
    quality = _load(bench_dir, "time_to_quality") or {}
    q = quality.get("summary")
    if q and q["fid_key"] != "fid_inception_10k":
        q = None  # the recipe targets are set in Inception FID-10k
    best = f"best recipe (`{q['best']}`)" if q else "best recipe"
    rows = [t["lite_over_seed_fid"].row(quality["lite"]["fid"] / quality["seed"]["fid"]
                                        if "lite" in quality and "seed" in quality else None),
            t["recipe_over_baseline_fid"].row(q and "baseline_fid" in q and q["fid"] / q["baseline_fid"] or None,
                                              best=best),
            t["recipe_inception_fid"].row(q and q["fid"], best=best),
            t["recipe_last_over_best"].row(q and q["last_over_best"], best=best)]
    long = (_load(bench_dir, "time_to_quality_60min") or {}).get("summary")
    if long and long["snapshot_key"] != "fid_inception_10k":
        long = None
    long_best = f"`{long['best']}`" if long else "best recipe"
    rows += [t["long_run_over_best"].row(long and long["snapshot_over_best"].get(minute), minute=minute,
                                         best=long_best) for minute in ("30", "60")]
    rows.append(t["recipe_recall"].row(q and q["recall"], best=best))
    small = (_load(bench_dir, "time_to_quality_6000") or {}).get("summary")
    rows.append(t["small_data_last_over_best"].row(small and small["last_over_best"],
                                                   best=f"`{small['best']}`" if small else "best recipe"))
    return rows


def _stage_rows(t: dict[str, Target], bench_dir: Path) -> list[dict[str, str]]:
    featurizer = (_load(bench_dir, "featurizer_budget") or {}).get("runs", {})
    bounded, full = featurizer.get("params.yaml"), featurizer.get("15 epochs")
    inception = _load(bench_dir, "inception_reference") or {}
    evaluation = _load(bench_dir, "evaluation_speed") or {}
    return [t["featurizer_minutes"].row(bounded and bounded["wall_s"] / 60),
            t["featurizer_accuracy_gap"].row(bounded and full and bounded["test_accuracy"] - full["test_accuracy"]),
            t["inception_img_per_s"].row(inception.get("extract_test", {}).get("img_per_s")),
            t["evaluate_stage_s"].row(evaluation.get("evaluate_stage", {}).get("wall_s")),
            t["cifar_fid_10k_s"].row(evaluation.get("cifar10", {}).get("fid_10k", {}).get("wall_s"))]


def _optimize_rows(t: dict[str, Target], results: dict, bench_dir: Path) -> list[dict[str, str]]:
    winner = next((r for name, r in results["generation"]["rows"].items() if name.startswith("winner")), None)
    optimize = _load(bench_dir, "optimize_speed") or {}
    contention = results["generation"].get("winner_vs_baseline")
    serve = _load(bench_dir, "serve_load") or {}
    rows = [t["winner_vs_seed_fp32"].row(winner and winner["vs_seed_fp32"]),
            t["winner_busy_vs_baseline"].row(contention and contention["beside_a_busy_process"],
                                             baseline=contention["baseline"] if contention else "its arch"),
            t["serve_winner_busy_vs_baseline"].row(serve.get("winner_vs_baseline", {}).get("beside_a_busy_process")),
            t["serve_bulk_winner_busy_vs_baseline"].row(
                serve.get("bulk_winner_vs_baseline", {}).get("beside_a_busy_process")),
            t["winner_fid_ratio"].row(optimize.get("winner_fid_ratio")),
            t["unpruned_ceiling_fraction"].row(optimize.get("best_unpruned_fp32_ceiling_fraction"))]
    fid_bound = t["cifar_compressed_fid_ratio"].bound
    for reading, best in ((_load(bench_dir, "optimize_cifar") or {}).get("best_compressed", {})).items():
        rows.append(t["cifar_compressed_speedup"].row(best["speedup_batch256"], best["fid_ratio"] <= fid_bound,
                                                      variant=best["variant"], reading=reading,
                                                      fid_ratio=best["fid_ratio"], fid_bound=fid_bound))
    return rows


def target_lines(results: dict, bench_dir: Path) -> list[str]:
    """One row per target of ``bench_dir/targets.yaml`` that a benchmark measures: its latest value, where it
    was measured, and met or missed. Figures come from this run where it measures them, else from the
    benchmark that does (its JSON in ``bench_dir``)."""
    t = load_targets(bench_dir / TARGETS_FILE)
    return target_table([*_pipeline_and_data_rows(t, results, bench_dir), *_quality_rows(t, bench_dir),
                         *_stage_rows(t, bench_dir), *_optimize_rows(t, results, bench_dir)])
