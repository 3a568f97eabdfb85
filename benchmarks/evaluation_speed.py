"""Measure evaluation speed: the evaluate stage on the default pipeline outputs, and FID of 10,000 generated
images against cached CIFAR-10 train statistics. (The domain extractor's images/s is `ganforge bench`'s.)

    python benchmarks/evaluation_speed.py [--archive ../shared/datasets/cifar10-jpeg.tar.gz] [--render]

The evaluate and reference stages are timed as subprocesses of their stage scripts on this checkout's
pipeline outputs (run `dvc repro` first), writing to a temp dir. With the CIFAR-10 JPEG archive, it is
prepared at 32x32, a featurizer is trained on it briefly (speed does not depend on how well), the reference
stage caches the train and test statistics, and a ``seed`` generator's 10,000 samples are scored against
them. Results go to bench/evaluation_speed.json and the generated section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from data_path import prepare_archive
from measure import REPO, machine, machine_line, save_results, targets, timed, write_doc_section

from ganforge.config import read_params

RESULTS = REPO / "bench/evaluation_speed.json"
DEFAULT_ARCHIVE = REPO.parent / "shared/datasets/cifar10-jpeg.tar.gz"
TARGETS = targets(evaluate_stage_s="evaluate_stage_s", cifar_fid_10k_s="cifar_fid_10k_s")


def stage_times(work: Path) -> dict:
    """Wall time and peak memory of the reference and evaluate stage scripts on the pipeline's outputs."""
    needed = [REPO / p for p in ("data/prepared/manifest.json", "models/featurizer/featurizer.safetensors",
                                 "models/train")]
    if not all(p.exists() for p in needed):
        sys.exit("pipeline outputs missing: run `dvc repro` first")
    common = ["--featurizer", str(REPO / "models/featurizer/featurizer.safetensors")]
    reference = timed([sys.executable, str(REPO / "stages/reference.py"), "--data", str(REPO / "data/prepared"),
                       *common, "--out", str(work / "reference"), "--metrics", str(work / "reference.json")], REPO)
    evaluate = timed([sys.executable, str(REPO / "stages/evaluate.py"), "--train-dir", str(REPO / "models/train"),
                      "--data", str(REPO / "data/prepared"), *common, "--reference", str(work / "reference"),
                      "--metrics", str(work / "evaluate.json"), "--speed", str(work / "speed.json"),
                      "--grid", str(work / "samples.png"), "--nearest", str(work / "nearest.png")], REPO)
    return {"reference_stage": reference, "evaluate_stage": evaluate}


def cifar(archive: Path, work: Path, featurizer_epochs: int, samples: int) -> dict:
    """Prepare CIFAR-10, train a featurizer briefly, cache the reference statistics, time FID of ``samples``."""
    import torch_fidelity
    from torch_fidelity.generative_model_modulewrapper import GenerativeModelModuleWrapper

    from ganforge.config import EvaluateConfig, FeaturizerConfig, ReferenceConfig, stage_config
    from ganforge.evaluation.features import train_featurizer
    from ganforge.evaluation.fidelity import UInt8Generator
    from ganforge.evaluation.protocol import make_protocol, score_generator
    from ganforge.evaluation.reference import compute_reference
    from ganforge.models import GeneratorSpec, build_generator

    params = read_params(REPO / "params.yaml")

    def load(cls, **overrides):
        return stage_config(cls, params, **overrides)

    out: dict = {}
    print("preparing CIFAR-10 ...", flush=True)
    out["prepare"] = prepare_archive(archive, work)
    print(f"training the featurizer ({featurizer_epochs} epochs) ...", flush=True)
    featurizer = work / "featurizer.safetensors"
    start = time.perf_counter()
    trained = train_featurizer(load(FeaturizerConfig, epochs=featurizer_epochs), work / "prepared", featurizer,
                               work / "featurizer.json")
    out["featurizer"] = {"epochs": featurizer_epochs, "test_accuracy": trained["test_accuracy"],
                         "wall_s": round(time.perf_counter() - start, 1)}

    print("caching the reference statistics ...", flush=True)
    reference_cfg = load(ReferenceConfig)
    start = time.perf_counter()
    real = compute_reference(reference_cfg, work / "prepared", featurizer, work / "reference",
                             work / "reference-metrics.json")
    out["reference"] = {"wall_s": round(time.perf_counter() - start, 1), "train_count": real["train"]["count"],
                        "test_count": real["test"]["count"],
                        "train_extract_img_per_s": round(real["train"]["extract_img_per_s"])}

    cfg = dataclasses.replace(load(EvaluateConfig), num_samples=samples)
    protocol = make_protocol(cfg, reference_cfg, work / "reference", featurizer)
    torch.manual_seed(0)
    generator = build_generator(GeneratorSpec("seed", 100, 32, 3)).eval()  # timing does not depend on training
    name = protocol.reference.cache_name(protocol.reference.split)
    print(f"FID of {samples} generated images against the cached train statistics ...", flush=True)
    start = time.perf_counter()
    fid = torch_fidelity.calculate_metrics(
        input1=GenerativeModelModuleWrapper(UInt8Generator(generator), 100, "normal", 0),
        input1_model_num_samples=samples, input2=name, input2_cache_name=name, fid=True,
        **protocol.reference.fidelity_kwargs(cfg.batch_size, cfg.seed))[torch_fidelity.KEY_METRIC_FID]
    out["fid_10k"] = {"wall_s": round(time.perf_counter() - start, 1), "samples": samples,
                      "reference_count": protocol.reference.counts["train"], "fid_untrained": round(fid, 2)}
    print(f"the full protocol (FID, KID, IS, precision/recall) on {samples} samples ...", flush=True)
    start = time.perf_counter()
    score_generator(generator, 100, protocol)
    out["full_protocol_10k"] = {"wall_s": round(time.perf_counter() - start, 1), "samples": samples}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--featurizer-epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--render", action="store_true", help="only regenerate the doc section from the results")
    args = parser.parse_args()
    if args.render:
        render(json.loads(RESULTS.read_text()))
        return

    results: dict = {"machine": machine(), "targets": TARGETS}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("timing the reference and evaluate stages ...", flush=True)
        results |= stage_times(work)
        if args.archive.is_file():
            (work / "cifar").mkdir()
            results["cifar10"] = cifar(args.archive, work / "cifar", args.featurizer_epochs, args.samples)
        else:
            print(f"{args.archive} not found: skipping the CIFAR-10 FID timing", flush=True)
    save_results(RESULTS, results, render)


def _verdict(value: float, target: float, at_most: bool) -> str:
    return "met" if (value <= target if at_most else value >= target) else "**missed**"


def render(results: dict) -> None:
    t = results["targets"]
    evaluate_s, peak = results["evaluate_stage"]["wall_s"], results["evaluate_stage"]["peak_rss_mib"]
    lines = [machine_line(results["machine"]), "",
             "| measurement | value | target | |", "|---|---|---|---|",
             f"| evaluate stage on the default data (process wall time, peak {peak} MiB) | {evaluate_s:.1f} s | "
             f"≤ {t['evaluate_stage_s']:.0f} s | "
             f"{_verdict(evaluate_s, t['evaluate_stage_s'], True)} |",
             f"| reference stage on the default data | {results['reference_stage']['wall_s']:.1f} s | | |"]
    c = results.get("cifar10")
    if c:
        fid_s = c["fid_10k"]["wall_s"]
        lines += [
            f"| FID of {c['fid_10k']['samples']:,} generated images against cached CIFAR-10 train statistics "
            f"({c['fid_10k']['reference_count']:,} images; generation + features + FID) | {fid_s:.1f} s | "
            f"≤ {t['cifar_fid_10k_s']:.0f} s | {_verdict(fid_s, t['cifar_fid_10k_s'], True)} |",
            f"| the full protocol (FID, KID, IS, precision/recall) on the same {c['full_protocol_10k']['samples']:,}"
            f" samples | {c['full_protocol_10k']['wall_s']:.1f} s | | |",
            f"| reference stage on CIFAR-10 ({c['reference']['train_count']:,} train + "
            f"{c['reference']['test_count']:,} test images, once per featurizer) | {c['reference']['wall_s']:.1f} s"
            f" | | |",
        ]
    else:
        lines += ["", "The CIFAR-10 archive was not present, so the CIFAR-10 FID timing was not measured."]
    write_doc_section("evaluation-speed", lines)


if __name__ == "__main__":
    main()
