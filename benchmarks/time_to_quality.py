"""Time to quality on real data: train ``seed`` and ``lite`` on CIFAR-10 for the same wall time, then score both.

    python benchmarks/time_to_quality.py [--minutes 30] [--archive ../shared/datasets/cifar10-jpeg.tar.gz]

The CIFAR-10 JPEG archive is prepared at 32x32 and the domain featurizer trained on it (as the pipeline
does). Then both architectures train side by side, at the same time, one thread each, for ``--minutes`` of
wall time with the params.yaml train settings (only ``arch`` differs), logging an in-loop FID. Each
generator with the best in-loop FID is then scored by the evaluate stage's protocol. Results go to
bench/time_to_quality.json and the generated section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from data_path import prepare_archive
from measure import DEFAULT_ARCHIVE, REPO, machine, machine_line, run_in_work_dir, write_doc_section

from ganforge.config import read_params

RESULTS = REPO / "bench/time_to_quality.json"
ARCHS = ("seed", "lite")


def _configs(arch: str, fid_interval_kimg: float, fid_samples: int) -> tuple:
    from ganforge.config import EvaluateConfig, FeaturizerConfig, ReferenceConfig, TrainConfig, config_from_dict

    params = read_params(REPO / "params.yaml")

    def load(cls, **overrides):
        return config_from_dict(cls, {k: params[k] for k in cls.TOP_LEVEL} | params[cls.SECTION] | overrides)

    # An endless budget: the time limit ends the run. Checkpoints are rare; they are not what is measured.
    train_cfg = load(TrainConfig, arch=arch, kimg=1e6, checkpoint_kimg=1e5, fid_interval_kimg=fid_interval_kimg,
                     fid_samples=fid_samples, snapshot_kimg=fid_interval_kimg, device="cpu")
    return train_cfg, load(FeaturizerConfig), load(ReferenceConfig), load(EvaluateConfig, generator="best")


def worker(arch: str, work: Path, minutes: float, fid_interval_kimg: float, fid_samples: int) -> None:
    """One training run, one thread, stopped by the time limit (run in its own process)."""
    import torch

    from ganforge.training.loop import train

    torch.set_num_threads(1)
    cfg, *_ = _configs(arch, fid_interval_kimg, fid_samples)
    result = train(cfg, work / "prepared", work / arch / "train", work / arch / "live",
                   featurizer_path=work / "featurizer.safetensors", time_limit_s=minutes * 60)
    (work / arch / "result.json").write_text(json.dumps({"kimg": result.cur_nimg / 1000,
                                                         "train_img_per_s": result.train_img_per_s}))


def inloop_curve(live_dir: Path) -> list[dict]:
    """(minutes since the first log line, kimg, in-loop FID) from dvclive's TSVs."""
    def rows(name: str) -> list[dict]:
        with (live_dir / "plots/metrics" / f"{name}.tsv").open() as f:
            return list(csv.DictReader(f, delimiter="\t"))

    kimg = {r["step"]: float(r["kimg"]) for r in rows("kimg")}
    minutes = {r["step"]: float(r["elapsed_min"]) for r in rows("elapsed_min")}
    return [{"minutes": round(minutes[r["step"]], 1), "kimg": kimg[r["step"]],
             "fid_inloop": round(float(r["fid_inloop"]), 2)} for r in rows("fid_inloop")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--minutes", type=float, default=30.0, help="wall time of each training run")
    parser.add_argument("--featurizer-epochs", type=int, default=6)
    parser.add_argument("--fid-interval-kimg", type=float, default=100.0)
    parser.add_argument("--fid-samples", type=int, default=1000)
    parser.add_argument("--work", type=Path, help="keep intermediate files here (default: a temp dir)")
    parser.add_argument("--no-inception", dest="inception", action="store_false",
                        help="skip Inception FID-10k (it needs pip install -e '.[inception]' and about 25 minutes)")
    parser.add_argument("--worker", choices=ARCHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.work, args.minutes, args.fid_interval_kimg, args.fid_samples)
        return
    run_in_work_dir(args.archive, args.work, lambda work: run(args, work), RESULTS, render)


def run(args: argparse.Namespace, work: Path) -> dict:
    import dataclasses

    from ganforge.evaluation.evaluate import evaluate
    from ganforge.evaluation.features import train_featurizer
    from ganforge.evaluation.reference import compute_reference, extractors

    results: dict = {"machine": machine(), "minutes": args.minutes, "threads_per_run": 1,
                     "fid_interval_kimg": args.fid_interval_kimg, "fid_samples_inloop": args.fid_samples,
                     "inception": args.inception}
    results["reused"] = []  # a kept --work dir skips what it already holds
    if (work / "prepared/manifest.json").is_file():
        results["reused"].append("prepared data")
    else:
        print("preparing CIFAR-10 ...", flush=True)
        prepare_archive(args.archive, work)
    _, featurizer_cfg, reference_cfg, evaluate_cfg = _configs("seed", args.fid_interval_kimg, args.fid_samples)
    featurizer_cfg = dataclasses.replace(featurizer_cfg, epochs=args.featurizer_epochs)
    if args.inception:  # the domain figures, and Inception FID-10k beside them
        reference_cfg = dataclasses.replace(reference_cfg, feature_extractor="inception-v3-compat")
    if (work / "featurizer.safetensors").is_file():
        results["reused"].append("featurizer")
    else:
        print(f"training the featurizer ({featurizer_cfg.epochs} epochs) ...", flush=True)
        train_featurizer(featurizer_cfg, work / "prepared", work / "featurizer.safetensors", work / "featurizer.json")
    results["featurizer"] = json.loads((work / "featurizer.json").read_text())
    if reference_matches(reference_cfg, work):
        results["reused"].append("reference statistics")
    else:
        print(f"reference statistics ({', '.join(extractors(reference_cfg))}) ...", flush=True)
        compute_reference(reference_cfg, work / "prepared", work / "featurizer.safetensors", work / "reference",
                          work / "reference-metrics.json")

    print(f"training {' and '.join(ARCHS)} side by side for {args.minutes} min each ...", flush=True)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    procs = {}
    for arch in ARCHS:
        (work / arch).mkdir(exist_ok=True)
        cmd = [sys.executable, __file__, "--worker", arch, "--work", str(work), "--minutes", str(args.minutes),
               "--fid-interval-kimg", str(args.fid_interval_kimg), "--fid-samples", str(args.fid_samples)]
        log = (work / arch / "log.txt").open("w")
        procs[arch] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    start = time.perf_counter()
    for arch, proc in procs.items():
        if proc.wait() != 0:
            sys.exit(f"training {arch} failed:\n{(work / arch / 'log.txt').read_text()[-4000:]}")
    results["wall_s_both"] = round(time.perf_counter() - start)

    for arch in ARCHS:
        train_cfg, *_ = _configs(arch, args.fid_interval_kimg, args.fid_samples)
        print(f"scoring {arch} ...", flush=True)
        metrics = evaluate(evaluate_cfg, reference_cfg, work / arch / "train", work / "prepared",
                           work / "featurizer.safetensors", work / "reference", work / arch / "evaluate.json",
                           work / arch / "samples.png", work / arch / "nearest.png", work / arch / "speed.json")
        results[arch] = {
            "width": train_cfg.width,
            **json.loads((work / arch / "result.json").read_text()),
            "fid": metrics["fid"], "kid_mean": metrics["kid_mean"], "precision": metrics["precision"],
            "recall": metrics["recall"], "fid_real_floor": metrics["fid_real_floor"],
            "protocol": metrics["protocol"],
            "inloop": inloop_curve(work / arch / "live"),
            **{k: v for k, v in metrics.items() if "inception" in k},
        }
    return results


def reference_matches(reference_cfg, work: Path) -> bool:
    """Whether ``work`` already holds reference statistics for ``reference_cfg`` (every extractor)."""
    from ganforge.errors import UserError
    from ganforge.evaluation.reference import extractors, load_reference

    try:
        for extractor in extractors(reference_cfg):
            load_reference(work / "reference", reference_cfg, work / "featurizer.safetensors", extractor)
    except UserError:
        return False
    return True


def render(results: dict) -> None:
    e = results[ARCHS[0]]["protocol"]
    lines = [machine_line(results["machine"]), "",
             f"Both runs trained at the same time, {results['threads_per_run']} thread each, for "
             f"{results['minutes']:.0f} minutes of wall time on CIFAR-10 (50,000 training images, 32×32), with "
             f"the params.yaml train settings and only `arch` changed. FID: the best in-loop generator scored by "
             f"the evaluate protocol ({e['num_samples']} samples against the {e['reference_split']} split, domain "
             f"features; real-vs-real floor {results[ARCHS[0]]['fid_real_floor']:.2f}; featurizer test accuracy "
             f"{results['featurizer']['test_accuracy']:.3f})."
             + (f" Reused from an earlier run in the same work directory: {', '.join(results['reused'])}."
                if results.get("reused") else ""), "",
             "| arch | kimg reached | train img/s | FID | KID | precision | recall | Inception FID-10k |",
             "|---|---|---|---|---|---|---|---|"]
    for arch in ARCHS:
        r = results[arch]
        inception = f"{r['fid_inception_10k']:.2f}" if "fid_inception_10k" in r else "not measured"
        lines.append(f"| `{arch}` (width {r['width']}) | {r['kimg']:.0f} | {r['train_img_per_s']:.0f} | "
                     f"{r['fid']:.2f} | {r['kid_mean']:.4f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{inception} |")
    if "protocol_inception_10k" in results[ARCHS[0]]:
        p = results[ARCHS[0]]["protocol_inception_10k"]
        lines += ["", f"Inception FID-10k: {p['num_samples']:,} generated images against {p['reference_count']:,} "
                  f"{p['reference_split']} images (a seeded subset), {p['resize']}; weights: "
                  f"{p['feature_extractor_source']} (sha256 `{p['feature_extractor_sha256'][:16]}…`). Real-vs-real "
                  f"floor: {results[ARCHS[0]]['fid_real_floor_inception_10k']:.2f}."]
    lines += ["", f"In-loop FID ({results['fid_samples_inloop']} samples against as many training images) along "
              f"the way:", "", "| arch | minutes | kimg | in-loop FID |", "|---|---|---|---|"]
    for arch in ARCHS:
        lines += [f"| `{arch}` | {p['minutes']:.1f} | {p['kimg']:.0f} | {p['fid_inloop']:.2f} |"
                  for p in results[arch]["inloop"]]
    write_doc_section("time-to-quality", lines)


if __name__ == "__main__":
    main()
