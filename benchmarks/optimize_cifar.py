"""The optimize stage on real data: CIFAR-10 at 32x32, from a ``lite`` generator trained for 30 minutes.

    python benchmarks/optimize_cifar.py [--work DIR] [--minutes 30] [--prune-ratio 0.5] [--int8-backend onednn]

It prepares the CIFAR-10 JPEG archive from ../shared/datasets/, trains the domain featurizer on it, computes
the reference statistics, trains ``lite`` (the params.yaml train settings) for ``--minutes`` of wall time and
then runs the optimize library function on it: every variant timed side by side in one run, each scored by
the evaluate protocol. The target: a pruned or quantized variant gives 3x or more the images/s of that
generator in eager fp32 at batch 256, with FID no more than 10% higher.

A ``--work`` directory that already holds a step's output (for example the ``lite`` run that
``benchmarks/time_to_quality.py --work DIR`` trained) is reused rather than redone; the page says so.
Results go to bench/optimize_cifar.json and the generated section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from data_path import prepare_archive
from measure import REPO, cifar_main, machine, machine_line, targets, write_doc_section
from time_to_quality import _configs, featurizer_and_reference

from ganforge.config import read_params

RESULTS = REPO / "bench/optimize_cifar.json"
VARIANTS = ("fused", "int8", "bf16", "bf16+compiled", "onnxruntime", "direct", "direct+compiled", "pruned+fused",
            "pruned+int8", "pruned+bf16", "pruned+bf16+compiled", "pruned+onnxruntime", "pruned+direct",
            "pruned+direct+compiled")
# "A pruned or quantized variant", read two ways: strictly (channel pruning or int8), and with the reduced
# float types too (TFLite, for one, calls casting weights to float16 "float16 quantization"); and "a variant"
# read as any optimization step at all (the fp32 kernels and runtimes too).
COMPRESSION_READINGS = {"pruned or int8": {"pruned", "int8"},
                        "pruned, int8, bf16 or fp16": {"pruned", "int8", "bf16", "fp16"},
                        "any step": {"pruned", "int8", "bf16", "fp16", "fused", "direct", "compiled", "onnxruntime"}}
TARGETS = targets(speedup_vs_lite_fp32="cifar_compressed_speedup", fid_ratio="cifar_compressed_fid_ratio")


def run(args: argparse.Namespace, work: Path) -> dict:
    import torch

    from ganforge.config import OptimizeConfig, stage_config
    from ganforge.optimization.optimize import optimize
    from ganforge.training.loop import train

    train_cfg, featurizer_cfg, reference_cfg, evaluate_cfg = _configs({"arch": "lite"}, args.fid_interval_kimg,
                                                                       args.fid_samples)
    if args.inception:  # screened in domain units, the budget held in Inception FID-10k
        reference_cfg = dataclasses.replace(reference_cfg, feature_extractor="inception-v3-compat")
    reused = []
    if (work / "prepared/manifest.json").is_file():
        reused.append("prepared data")
    else:
        print("preparing CIFAR-10 ...", flush=True)
        prepare_archive(args.archive, work)
    featurizer_and_reference(work, dataclasses.replace(featurizer_cfg, epochs=args.featurizer_epochs), reference_cfg,
                             reused)
    lite_dir = work / "lite"
    if (lite_dir / "train/generator-best.safetensors").is_file():
        reused.append("lite generator")
    else:
        print(f"training lite for {args.minutes} min ...", flush=True)
        result = train(train_cfg, work / "prepared", lite_dir / "train", lite_dir / "live",
                       featurizer_path=work / "featurizer.safetensors", time_limit_s=args.minutes * 60)
        (lite_dir / "result.json").write_text(json.dumps({"kimg": result.cur_nimg / 1000,
                                                          "train_img_per_s": result.train_img_per_s}))
    trained = json.loads((lite_dir / "result.json").read_text())

    params = read_params(REPO / "params.yaml")
    cfg = stage_config(OptimizeConfig, params)
    cfg = dataclasses.replace(cfg, variants=tuple(args.variants), prune_ratio=args.prune_ratio,
                              fid_units="inception" if args.inception else "domain",
                              int8_backend=args.int8_backend,
                              finetune_kimg=args.finetune_kimg, speed_batches=tuple(sorted({*cfg.speed_batches, 256})))
    print(f"optimizing {len(args.variants) + 1} variants ...", flush=True)
    metrics = optimize(cfg, evaluate_cfg, reference_cfg, lite_dir / "train", work / "featurizer.safetensors",
                       work / "reference", work / "optimized", work / "optimize.json", work / "optimize.csv")
    rows = metrics["variants"]
    return {
        "machine": machine() | {"torch_threads": torch.get_num_threads()}, "targets": TARGETS,
        "minutes": args.minutes, "lite_kimg": trained["kimg"], "lite_train_img_per_s": trained["train_img_per_s"],
        "reused": reused, "prune_ratio": args.prune_ratio, "finetune_kimg": args.finetune_kimg,
        "int8_backend": args.int8_backend,
        "winner": metrics["winner"],
        "deploy_batch": metrics["batch"], "gemm_gflops": metrics["gemm_gflops"],
        "best_compressed": {reading: best_compressed(rows, steps) for reading, steps in COMPRESSION_READINGS.items()},
        "distillation": metrics.get("distillation"), "int8_float_layers": metrics.get("int8_float_layers"),
        "skipped": metrics.get("skipped", {}), "failed": metrics.get("failed", {}), "rows": rows,
        "inception": metrics.get("inception"),
    }


def best_compressed(rows: dict, steps: set[str]) -> dict:
    """The fastest variant at batch 256 using one of ``steps``, preferring those within the FID target."""
    from ganforge.runtime.variants import variant_steps

    base = rows["fp32"]
    candidates = {name: row for name, row in rows.items() if set(variant_steps(name)) & steps}
    within = {name: row for name, row in candidates.items()
              if row["fid"] <= base["fid"] * TARGETS["fid_ratio"]} or candidates
    name = max(within, key=lambda n: within[n]["img_per_s_batch256"])
    return {"variant": name, "speedup_batch256": rows[name]["img_per_s_batch256"] / base["img_per_s_batch256"],
            "fid_ratio": rows[name]["fid"] / base["fid"]}


def _target_row(reading: str, best: dict, t: dict) -> str:
    met = best["speedup_batch256"] >= t["speedup_vs_lite_fp32"] and best["fid_ratio"] <= t["fid_ratio"]
    return (f"| a variant using {reading}: ≥ {t['speedup_vs_lite_fp32']:.0f}× `lite` eager fp32 at batch 256, FID ≤ "
            f"{t['fid_ratio']:g}× | `{best['variant']}`: {best['speedup_batch256']:.2f}×, "
            f"FID {best['fid_ratio']:.3f}× | {'met' if met else '**missed**'} |")


def render(results: dict) -> None:
    t, rows, d = results["targets"], results["rows"], results["distillation"]
    reused = (f" Reused from an earlier run in the same work directory: {', '.join(results['reused'])}."
              if results["reused"] else "")
    lines = [machine_line(results["machine"]), "",
             f"`lite` (width 1.0) under the params.yaml train recipe, trained on CIFAR-10 at 32×32 for "
             f"{results['minutes']:.0f} minutes of wall time "
             f"({results['lite_kimg']:.0f} kimg), then every variant timed side by side in one run "
             f"({results['machine']['torch_threads']} threads, median of interleaved repeats) and scored by the "
             f"evaluate protocol (2000 samples, domain features, train split). Pruning ratio "
             f"{results['prune_ratio']}; the distillation fine-tune ({results['finetune_kimg']:.0f} kimg) took the "
             f"pruned generator's L1 distance to the trained one from {d['teacher_l1_before']:.3f} to "
             f"{d['teacher_l1_after']:.3f}. int8 runs on torch.ao's `{results.get('int8_backend', 'fbgemm')}` "
             f"engine.{reused}", "",
             "| target | measured | |", "|---|---|---|",
             *(_target_row(reading, best, t) for reading, best in results["best_compressed"].items()), "",
             "| variant | img/s b1 | img/s b64 | img/s b256 | × fp32 (b256) | FID | MMACs | params | MiB on disk |",
             "|---|---|---|---|---|---|---|---|---|"]
    base = rows["fp32"]["img_per_s_batch256"]
    for name, r in rows.items():
        lines.append(f"| `{name}` | {r['img_per_s_batch1']:.0f} | {r['img_per_s_batch64']:.0f} | "
                     f"{r['img_per_s_batch256']:.0f} | {r['img_per_s_batch256'] / base:.2f} | {r['fid']:.3f} | "
                     f"{r['macs'] / 1e6:.2f} | {r['params']:,} | {r['size_bytes'] / 2**20:.2f} |")
    for name, why in results["skipped"].items():
        lines.append(f"| `{name}` | skipped: {why} ||||||||")
    for name, why in results.get("failed", {}).items():
        lines.append(f"| `{name}` | failed to build: {why} ||||||||")
    if results.get("inception"):
        i, p = results["inception"], results["inception"]["protocol"]
        fids = ", ".join(f"`{name}` {fid:.2f}" for name, fid in i["fid_inception_10k"].items())
        lines += ["", f"The budget held in Inception units: variants screened in domain FID, then scored in "
                  f"Inception FID-10k ({p['num_samples']:,} samples against {p['reference_count']:,} "
                  f"{p['reference_split']} images), fastest first, until one met the budget "
                  f"{i['fid_budget_inception_10k']:.2f}: {fids}. Winner `{results['winner']}`; the Inception "
                  f"scoring took {i['seconds'] / 60:.1f} minutes."]
    write_doc_section("optimize-cifar", lines)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=30.0, help="wall time of the lite training run")
    parser.add_argument("--prune-ratio", type=float, default=0.3)
    parser.add_argument("--finetune-kimg", type=float, default=400.0, help="distillation of the pruned generator")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--int8-backend", default="onednn",
                        help="torch.ao engine of the int8 variants; lite has no transposed convs, so oneDNN's "
                             "per-channel int8 kernels (VNNI/AMX where the CPU has them) apply")
    parser.add_argument("--featurizer-epochs", type=int, default=6)
    parser.add_argument("--fid-interval-kimg", type=float, default=100.0)
    parser.add_argument("--fid-samples", type=int, default=1000)
    parser.add_argument("--no-inception", dest="inception", action="store_false",
                        help="hold the budget in domain units only (Inception needs pip install -e '.[inception]')")


if __name__ == "__main__":
    cifar_main(__doc__, RESULTS, run, render, _arguments)
