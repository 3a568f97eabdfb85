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

import torch

from ganforge.benchmarking import sections
from ganforge.benchmarking.page import write_doc_section
from ganforge.errors import UserError
from ganforge.files import POSITIVE, Each, Maybe, atomic_path, check_json, read_json
from ganforge.measurement.ceilings import measure_ceilings
from ganforge.measurement.machine import machine, machine_line

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
        "latency_ms_batch1": float, "vs_seed_fp32": float, "gflops": float, "ceiling_fraction": float})},
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
    lines += ["", f"Generation at 32×32, batch {g['batch']} (and batch-1 latency), timed side by side:", "",
              "| generator | output | img/s | × `seed` fp32 | batch-1 ms | GFLOP/s | of fp32 GEMM |",
              "|---|---|---|---|---|---|---|"]
    for name, r in g["rows"].items():
        label = f"`{name}` eager fp32" if name in ("seed", "lite") else name
        lines.append(f"| {label} | {r['shape']} | {r['img_per_s_batch256']:,.0f} ({r['img_per_s_batch256_min']:,.0f}–"
                     f"{r['img_per_s_batch256_max']:,.0f}) | {r['vs_seed_fp32']:.2f} | {r['latency_ms_batch1']:.2f} | "
                     f"{r['gflops']:.1f} | {r['ceiling_fraction']:.1%} |")
    if "winner_skipped" in g:
        lines.append(f"| optimize winner | skipped: {g['winner_skipped']} ||||||")
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


def target_lines(results: dict, bench_dir: Path) -> list[str]:
    """One row per target set by the project's issues: its latest measured value, where it was measured,
    and met or missed. Figures come from this run where it measures them, else from the benchmark that
    does (its JSON in ``bench_dir``)."""
    rows: list[tuple[str, str, float | None, float, bool, bool]] = []  # what, source, value, target, at_most, ok

    def add(what: str, source: str, value: float | None, target: float, at_most: bool, also: bool = True) -> None:
        rows.append((what, source, value, target, at_most, also))

    p = results["pipeline"]
    budget = _load(bench_dir, "pipeline_budget") or {}
    repro = p.get("default_repro") or budget.get("repro_default")
    source = "`ganforge bench`" if "default_repro" in p else "`make bench-budget`"
    add("default `dvc repro` from scratch, minutes", source, repro and repro["wall_s"] / 60, 10, True)
    add("default `dvc repro`, peak GB", source, repro and repro["peak_rss_mib"] / 1024, 4, True)
    suite = budget.get("test_suite")
    add("test suite, minutes", "`make bench-budget`", suite and suite["wall_s"] / 60, 15, True)
    data = _load(bench_dir, "data_path") or {}
    cifar_prep = data.get("prepare_cifar10_jpeg")
    add("prepare CIFAR-10 JPEG (60,000 files), s", "`make bench-data`", cifar_prep and cifar_prep["wall_s"], 60, True)
    add("prepare CIFAR-10 JPEG, peak GB", "`make bench-data`", cifar_prep and cifar_prep["peak_rss_mib"] / 1024, 2,
        True)
    d = results["data"]
    add("data loader img/s", "`ganforge bench`", d["loader_img_per_s"]["median"], 20_000, False)
    add("data loader + DiffAugment img/s", "`ganforge bench`", d["loader_augmented_img_per_s"]["median"], 5_000, False)
    add("domain extractor img/s at 3×32×32", "`ganforge bench`", d["domain_features_img_per_s"]["median"], 2_000,
        False)
    add("DDP: 2 processes / 1 process training img/s", "`ganforge bench`", results["training"]["ddp"]["ratio"], 0.8,
        False)
    quality = _load(bench_dir, "time_to_quality") or {}
    add("CIFAR-10, 30 min each: `lite` FID / `seed` FID (lite reaches the lower FID)", "`make bench-quality`",
        quality["lite"]["fid"] / quality["seed"]["fid"] if "lite" in quality and "seed" in quality else None, 1, True)
    q = quality.get("summary")
    if q and q["fid_key"] != "fid_inception_10k":
        q = None  # the recipe targets are set in Inception FID-10k
    best = f"best recipe (`{q['best']}`)" if q else "best recipe"
    add(f"CIFAR-10, 30 min: {best} Inception FID-10k / the better of `seed` and `lite`", "`make bench-quality`",
        q and "baseline_fid" in q and q["fid"] / q["baseline_fid"] or None, 0.6, True)
    add(f"CIFAR-10, 30 min: {best} Inception FID-10k", "`make bench-quality`", q and q["fid"], 30, True)
    add(f"CIFAR-10, 30 min: {best} final in-loop FID / its best", "`make bench-quality`",
        q and q["last_over_best"], 1.15, True)
    long = (_load(bench_dir, "time_to_quality_60min") or {}).get("summary")
    if long and long["snapshot_key"] != "fid_inception_10k":
        long = None
    long_command = ("`benchmarks/time_to_quality.py --minutes 60 --only-listed --run default= "
                    "--snapshot-minutes 10,20,30,60`")
    long_best = f"`{long['best']}`" if long else "best recipe"
    for minute in ("30", "60"):
        add(f"CIFAR-10, 60 min: {long_best} Inception FID-10k at minute "
            f"{minute} / its best so far", long_command, long and long["snapshot_over_best"].get(minute), 1.15, True)
    add(f"CIFAR-10, 30 min: {best} recall (domain features)", "`make bench-quality`", q and q["recall"], 0.45, False)
    small = (_load(bench_dir, "time_to_quality_6000") or {}).get("summary")
    small_best = f"`{small['best']}`" if small else "best recipe"
    add(f"CIFAR-10, 5,000 training images, 30 min: {small_best} final in-loop FID / its best",
        "`make bench-quality` (`--max-images 6000`)", small and small["last_over_best"], 1.15, True)
    featurizer = (_load(bench_dir, "featurizer_budget") or {}).get("runs", {})
    bounded, full = featurizer.get("params.yaml"), featurizer.get("15 epochs")
    add("featurizer on CIFAR-10 (50,000 images, 32×32), minutes", "`make bench-featurizer`",
        bounded and bounded["wall_s"] / 60, 2, True)
    add("featurizer test accuracy − that of 15 epochs", "`make bench-featurizer`",
        bounded and full and bounded["test_accuracy"] - full["test_accuracy"], 0, False)
    inception = _load(bench_dir, "inception_reference") or {}
    add("Inception-v3 features, img/s on 2 cores (FID-10k under 6 minutes)", "`make bench-inception`",
        inception.get("extract_test", {}).get("img_per_s"), 30, False)
    evaluation = _load(bench_dir, "evaluation_speed") or {}
    add("evaluate stage on the default data, s", "`make bench-eval`",
        evaluation.get("evaluate_stage", {}).get("wall_s"), 60, True)
    add("FID of 10k samples vs cached CIFAR-10 statistics, s", "`make bench-eval`",
        evaluation.get("cifar10", {}).get("fid_10k", {}).get("wall_s"), 60, True)
    winner = next((r for name, r in results["generation"]["rows"].items() if name.startswith("winner")), None)
    add("optimize winner × `seed` eager fp32 img/s at batch 256", "`ganforge bench`",
        winner and winner["vs_seed_fp32"], 10, False)
    optimize = _load(bench_dir, "optimize_speed") or {}
    add("optimize winner FID / baseline FID", "`make bench-optimize`", optimize.get("winner_fid_ratio"), 1.1, True)
    add("best unpruned fp32 variant, fraction of fp32 GEMM at batch 256", "`make bench-optimize`",
        optimize.get("best_unpruned_fp32_ceiling_fraction"), 0.6, False)
    cifar = (_load(bench_dir, "optimize_cifar") or {}).get("best_compressed", {})
    for reading, best in cifar.items():
        add(f"CIFAR-10: `{best['variant']}` ({reading}) × `lite` fp32 at batch 256, with FID "
            f"{best['fid_ratio']:.3f}× (≤ 1.1×)", "`make bench-optimize-cifar`", best["speedup_batch256"], 3, False,
            also=best["fid_ratio"] <= 1.1)
    lines = ["| target | measured by | value | target | |", "|---|---|---|---|---|"]
    for what, source, value, target, at_most, also in rows:
        if value is None:
            lines.append(f"| {what} | {source} | not measured yet | {'≤' if at_most else '≥'} {target:,g} | — |")
            continue
        met = (value <= target if at_most else value >= target) and also
        shown = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
        lines.append(f"| {what} | {source} | {shown} | {'≤' if at_most else '≥'} {target:,g} | "
                     f"{'met' if met else '**missed**'} |")
    return lines
