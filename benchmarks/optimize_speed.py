"""Measure the optimize stage's targets: every variant side by side in one run, on this machine.

    python benchmarks/optimize_speed.py

It runs the optimize library function on this checkout's pipeline outputs (run `dvc repro` first) with the
params.yaml settings plus the torch.compile variants, writing to a temp dir. Then it checks two targets:

- the winner's images/s at batch 256 against the pipeline's generator in eager fp32 (the baseline row, timed
  in the same run; the target is set against ``seed``, which ``ganforge bench`` times beside the winner), with
  the winner's FID at most 1.1x the baseline's;
- the best unpruned fp32 variant's achieved GFLOP/s at batch 256 as a fraction of this machine's fp32 GEMM
  rate, measured in the same run.

Results go to bench/optimize_speed.json and the generated section of docs/benchmarks.md.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

from measure import REPO, machine, machine_line, save_results, targets, write_doc_section

from ganforge.config import read_params

RESULTS = REPO / "bench/optimize_speed.json"
EXTRA_VARIANTS = ("fused+compiled", "pruned+bf16+compiled")
WHOLE_CHAIN_FORMS = ("direct",)  # forms that compute each run of upsampling layers in one module
TARGETS = targets(speedup_vs_seed_fp32="winner_vs_seed_fp32", fid_ratio="winner_fid_ratio",
                  ceiling_fraction="unpruned_ceiling_fraction")


def run(work: Path) -> dict:
    from ganforge.config import EvaluateConfig, OptimizeConfig, ReferenceConfig, stage_config
    from ganforge.errors import UserError
    from ganforge.models import load_generator
    from ganforge.models.registry import trained_generator_path
    from ganforge.optimization.optimize import optimize
    from ganforge.runtime.variants import Recipe, build_variant, variant_steps

    if not (REPO / "models/train/checkpoint.pt").is_file() or not (REPO / "models/reference").is_dir():
        sys.exit("pipeline outputs missing: run `dvc repro` first")
    params = read_params(REPO / "params.yaml")

    def load(cls):
        return stage_config(cls, params)

    cfg = load(OptimizeConfig)
    cfg = dataclasses.replace(cfg, variants=tuple(dict.fromkeys((*cfg.variants, *EXTRA_VARIANTS))),
                              speed_batches=tuple(sorted({*cfg.speed_batches, 256})))
    metrics = optimize(cfg, load(EvaluateConfig), load(ReferenceConfig), REPO / "models/train",
                       REPO / "models/featurizer/featurizer.safetensors", REPO / "models/reference",
                       work / "optimized", work / "optimize.json", work / "optimize.csv")
    rows = metrics["variants"]
    baseline, winner = rows["fp32"], rows[metrics["winner"]]
    teacher, spec = load_generator(trained_generator_path(REPO / "models/train", load(EvaluateConfig).generator))
    profiles = {"fp32": layer_profile(build_variant(Recipe("fp32"), teacher, spec.z_dim), spec.z_dim, 256)}
    layers = [row["layer"] for row in profiles["fp32"]]  # the same names in the rewritten forms
    for name in ("fused", *WHOLE_CHAIN_FORMS):
        try:
            form = build_variant(Recipe(name), teacher, spec.z_dim)
        except UserError as error:  # a form the architecture has nothing for, or no compiler
            print(f"layer profile: {name} skipped: {error}", flush=True)
            continue
        inner = getattr(form, "generator", form)  # direct's generator, inside the module that makes images batch-major
        profiles[name] = layer_profile(inner, spec.z_dim, 256, names=layers)
    fp32_unpruned = {name: row for name, row in rows.items()
                     if not (set(variant_steps(name)) & {"pruned", "int8", "bf16", "fp16"})}
    best_fp32 = max(fp32_unpruned, key=lambda name: rows[name]["img_per_s_batch256"])
    return {
        "machine": machine(), "targets": TARGETS, "arch": spec.arch, "variants_measured": list(rows),
        "skipped": metrics.get("skipped", {}), "failed": metrics.get("failed", {}),
        "gemm_gflops": metrics["gemm_gflops"],
        "winner": metrics["winner"], "deploy_batch": metrics["batch"],
        "winner_speedup_batch256": winner["img_per_s_batch256"] / baseline["img_per_s_batch256"],
        "winner_fid_ratio": winner["fid"] / baseline["fid"],
        "best_unpruned_fp32": best_fp32, "best_unpruned_fp32_ceiling_fraction": rows[best_fp32]["ceiling_fraction"],
        "distillation": metrics.get("distillation"), "rows": rows, "layer_profile_batch256": profiles,
    }


def layer_profile(module, z_dim: int, batch: int, repeats: int = 20, names: list[str] | None = None) -> list[dict]:
    """Where a float generator's time goes at ``batch``: per module (its leaves, or the modules called
    ``names``), the median milliseconds (timed by forward hooks), the FLOPs it executes (torch's
    FlopCounterMode) and the GFLOP/s that makes."""
    import statistics
    import time

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    by_name = dict(module.named_modules())
    leaves = ({name: by_name[name] for name in names if name in by_name} if names is not None
              else {name: m for name, m in module.named_modules() if name and not list(m.children())})
    z = torch.randn(batch, z_dim, generator=torch.Generator().manual_seed(0))  # (batch, z_dim)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(z)
    flops = {name: sum(counts.values()) for name, counts in counter.get_flop_counts().items()}
    root = type(module).__name__
    samples: dict[str, list[float]] = {name: [] for name in leaves}
    started: dict[str, float] = {}
    handles = []
    for name, leaf in leaves.items():
        handles.append(leaf.register_forward_pre_hook(
            lambda _m, _i, n=name: started.__setitem__(n, time.perf_counter())))
        handles.append(leaf.register_forward_hook(
            lambda _m, _i, _o, n=name: samples[n].append(time.perf_counter() - started[n])))
    with torch.inference_mode():
        for _ in range(3):
            module(z)
        for samples_of in samples.values():
            samples_of.clear()
        for _ in range(repeats):
            module(z)
    for handle in handles:
        handle.remove()
    rows = []
    for name, leaf in leaves.items():
        ms = statistics.median(samples[name]) * 1000
        layer_flops = flops.get(f"{root}.{name}", 0)
        rows.append({"layer": name, "type": type(leaf).__name__, "ms": ms, "mflop": layer_flops / 1e6,
                     "gflops": layer_flops / ms / 1e6 if ms > 0 else 0.0})
    return rows


def _verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def render(results: dict) -> None:
    t, rows = results["targets"], results["rows"]
    speedup, fid_ratio = results["winner_speedup_batch256"], results["winner_fid_ratio"]
    ceiling = results["best_unpruned_fp32_ceiling_fraction"]
    arch = results["arch"]
    baseline = "`seed`" if arch == "seed" else (f"`{arch}` (the pipeline's architecture; the target is set against "
                                                f"`seed`, which `ganforge bench` times)")
    lines = [machine_line(results["machine"]), "",
             f"All variants timed side by side in one run (interleaved repeats, median), "
             f"{results['machine']['torch_threads']} threads; the fp32 GEMM ceiling, timed in the same rounds as "
             f"the variants at batch 256: {results['gemm_gflops']:.0f} GFLOP/s. The winner is chosen at the "
             f"deployment batch ({results['deploy_batch']}).", "",
             "| target | measured | |", "|---|---|---|",
             f"| winner ≥ {t['speedup_vs_seed_fp32']:.0f}× the images/s of {baseline} in eager fp32 at batch 256 | "
             f"`{results['winner']}`: {speedup:.2f}× | "
             f"{_verdict(speedup >= t['speedup_vs_seed_fp32']) if arch == 'seed' else 'not judged here'} |",
             f"| winner's FID ≤ {t['fid_ratio']:g}× the baseline's | {fid_ratio:.3f}× | "
             f"{_verdict(fid_ratio <= t['fid_ratio'])} |",
             f"| best unpruned fp32 variant ≥ {t['ceiling_fraction']:.0%} of the fp32 GEMM rate at batch 256 | "
             f"`{results['best_unpruned_fp32']}`: {ceiling:.1%} | {_verdict(ceiling >= t['ceiling_fraction'])} |",
             "", "| variant | img/s b1 | img/s b64 | img/s b256 | × fp32 (b256) | FID | MMACs | params | MiB on disk "
             "| peak MiB (b256) | GFLOP/s (b256) | of ceiling | build s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = rows["fp32"]["img_per_s_batch256"]
    for name, r in rows.items():
        lines.append(f"| `{name}` | {r['img_per_s_batch1']:.0f} | {r['img_per_s_batch64']:.0f} | "
                     f"{r['img_per_s_batch256']:.0f} | {r['img_per_s_batch256'] / base:.2f} | {r['fid']:.3f} | "
                     f"{r['macs'] / 1e6:.2f} | {r['params']:,} | {r['size_bytes'] / 2**20:.2f} | "
                     f"{r['peak_mem_mib']:.1f} | {r['gflops']:.1f} | {r['ceiling_fraction']:.1%} | "
                     f"{r['build_s']:.1f} |")
    for name, why in results["skipped"].items():
        lines.append(f"| `{name}` | skipped: {why} |||||||||||| ")
    for name, why in results.get("failed", {}).items():
        lines.append(f"| `{name}` | failed to build: {why} |||||||||||| ")
    profiles = results["layer_profile_batch256"]
    gemm = results["gemm_gflops"]
    lines += ["", "Where the unpruned generator's time goes at batch 256 (each module timed by forward hooks, median "
              "of 20). MFLOP is the `fp32` layer's count (FlopCounterMode); each form's GFLOP/s is that nominal "
              "count over its time, so the sub-pixel form's extra multiply-adds (2.25×: a 3×3 conv over four "
              "phases) count as lost time. `direct` computes each run of upsampling layers in one module, "
              "timed at the first module it replaces.", "",
              "| layer | fp32 module | MFLOP | `fp32` ms | `fused` module | `fused` ms | `fused` GFLOP/s "
              "| of ceiling | " + " | ".join(f"`{form}` module | `{form}` ms" for form in WHOLE_CHAIN_FORMS) + " |",
              "|---|---|---|---|---|---|---|---|" + "---|---|" * len(WHOLE_CHAIN_FORMS)]
    absent = {"type": "—", "ms": 0.0}
    fused = {row["layer"]: row for row in profiles["fused"]}
    whole = {form: {row["layer"]: row for row in profiles.get(form, [])} for form in WHOLE_CHAIN_FORMS}
    for row in profiles["fp32"]:
        f = fused.get(row["layer"], absent)
        gflops = row["mflop"] / f["ms"] if f["ms"] > 0 else 0.0  # MFLOP per ms = GFLOP/s
        chains = " | ".join(f"{w['type']} | {w['ms']:.2f}"
                            for w in (whole[form].get(row["layer"], absent) for form in WHOLE_CHAIN_FORMS))
        lines.append(f"| `{row['layer']}` | {row['type']} | {row['mflop']:.0f} | {row['ms']:.2f} | {f['type']} | "
                     f"{f['ms']:.2f} | {gflops:.0f} | {gflops / gemm:.0%} | {chains} |")
    write_doc_section("optimize", lines)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = run(Path(tmp))
    save_results(RESULTS, results, render)


if __name__ == "__main__":
    main()
