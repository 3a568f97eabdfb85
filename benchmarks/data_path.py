"""Measure the data stage: preparing the CIFAR-10 JPEG archive (60,000 files) at 32x32, and the training
data path (memory-mapped arrays -> shuffled batches -> optional DiffAugment) in images/s.

    python benchmarks/data_path.py [--archive ../shared/datasets/cifar10-jpeg.tar.gz]

Without the archive, the data path is measured on the bundled digits at 32x32 and preparation is skipped.
Results go to bench/data_path.json and the generated section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from measure import REPO, machine, machine_line, save_results, timed, write_doc_section

from ganforge.config import read_params

RESULTS = REPO / "bench/data_path.json"
DEFAULT_ARCHIVE = REPO.parent / "shared/datasets/cifar10-jpeg.tar.gz"
POLICY = ("color", "translation", "cutout")


def prepare_archive(archive: Path, work: Path, **overrides) -> dict:
    """Run the prepare stage script on the archive in a subprocess (params.yaml's prepare settings at 32x32,
    with ``overrides``); time it and its peak memory."""
    params = read_params(REPO / "params.yaml")
    params["prepare"] |= {"source": "archive", "path": str(archive.resolve()), "resolution": 32, **overrides}
    params_path = work / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))
    cmd = [sys.executable, str(REPO / "stages/prepare.py"), "--params", str(params_path),
           "--out", str(work / "prepared"), "--grid", str(work / "grid.png")]
    result = timed(cmd, work)
    manifest = json.loads((work / "prepared/manifest.json").read_text())
    result["files"] = manifest["files_seen"]
    result["files_per_s"] = round(manifest["files_seen"] / result["wall_s"])
    result["counts"] = manifest["counts"]
    return result


def data_path_rate(prepared: Path, augment: tuple[str, ...], batch: int = 64, seconds: float = 3.0) -> dict:
    """Images/s of BatchStream (+ DiffAugment) over ``seconds``, median of five runs."""
    from ganforge.data.augment import DiffAugment
    from ganforge.data.prepared import load_split
    from ganforge.data.stream import BatchStream

    split = load_split(prepared, "train")
    stream = iter(BatchStream(split, batch, seed=0))
    augmenter = DiffAugment(augment, seed=0)
    for _ in range(20):  # warm-up: page cache and allocator
        augmenter(next(stream))
    rates = []
    for _ in range(5):
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            n += augmenter(next(stream)).shape[0]
        rates.append(n / (time.perf_counter() - start))
    return {"img_per_s": round(statistics.median(rates)), "img_per_s_min": round(min(rates)),
            "img_per_s_max": round(max(rates)), "batch": batch, "images": split.images.shape[1:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    args = parser.parse_args()
    results: dict = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.archive.is_file():
            print(f"preparing {args.archive} ...", flush=True)
            results["prepare_cifar10_jpeg"] = prepare_archive(args.archive, work)
            prepared, data_name = work / "prepared", "CIFAR-10 train split, 3x32x32"
        else:
            from ganforge.config import PrepareConfig
            from ganforge.data.prepare import prepare

            prepare(PrepareConfig(resolution=32), work / "prepared", work / "grid.png")
            prepared, data_name = work / "prepared", "digits train split, 1x32x32"
        torch.set_num_threads(torch.get_num_threads())
        results["data_path"] = {"data": data_name,
                                "plain": data_path_rate(prepared, ()),
                                "augmented": data_path_rate(prepared, POLICY)}
    for part in results["data_path"].values():
        if isinstance(part, dict):
            part["images"] = list(part["images"])
    save_results(RESULTS, results, render)


def render(results: dict) -> None:
    lines = [machine_line(results["machine"]), ""]
    if "prepare_cifar10_jpeg" in results:
        p = results["prepare_cifar10_jpeg"]
        lines += ["| preparing the CIFAR-10 JPEG archive at 32×32 | figure | budget |", "|---|---|---|",
                  f"| wall time ({p['files']:,} files, {p['files_per_s']:,} files/s) | {p['wall_s']:.0f} s | 60 s |",
                  f"| peak memory (process tree) | {p['peak_rss_mib']} MiB | 2 GB |", ""]
    d = results["data_path"]
    lines += [f"Training data path on the {d['data']}, batches of {d['plain']['batch']} (median of 5, min–max):", "",
              "| data path | images/s | budget |", "|---|---|---|",
              f"| memory-mapped batches | {d['plain']['img_per_s']:,} ({d['plain']['img_per_s_min']:,}–"
              f"{d['plain']['img_per_s_max']:,}) | 20,000 |",
              f"| + DiffAugment `color,translation,cutout` | {d['augmented']['img_per_s']:,} "
              f"({d['augmented']['img_per_s_min']:,}–{d['augmented']['img_per_s_max']:,}) | 5,000 |"]
    write_doc_section("data-path", lines)


if __name__ == "__main__":
    main()
