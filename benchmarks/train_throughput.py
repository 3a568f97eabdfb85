"""Training throughput: images/s of the train stage for ``seed``, ``dcgan`` and ``lite`` at 32x32, and DDP
scaling (2 gloo processes with 1 thread each against 1 process with 2 threads), measured side by side.

    python benchmarks/train_throughput.py [--kimg 4] [--repeats 3]

Every figure is the train stage's own images/s (``train.json``), from runs of the real stage script under
torchrun on the bundled digits prepared at 32x32 with 3 channels. Architectures are interleaved across
repeats and the median is reported with the min-max. Results go to bench/train_throughput.json and the
generated section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from measure import REPO, machine, machine_line, save_results, write_doc_section

from ganforge.benchmarking.sections import train_stage_img_per_s
from ganforge.config import read_params

RESULTS = REPO / "bench/train_throughput.json"
ARCHS = ("seed", "dcgan", "lite")


def run_train(work: Path, name: str, train: dict, nproc: int, threads: int) -> float:
    """One run of the train stage script under torchrun; returns its images/s."""
    return train_stage_img_per_s(REPO, work, name, train, nproc, threads)


def summary(rates: list[float]) -> dict:
    return {"img_per_s": round(statistics.median(rates)), "img_per_s_min": round(min(rates)),
            "img_per_s_max": round(max(rates)), "runs": len(rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kimg", type=float, default=4.0, help="training length of each run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from ganforge.config import PrepareConfig
    from ganforge.data.prepare import prepare

    results: dict = {"machine": machine(), "kimg_per_run": args.kimg, "batch_size": None}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(PrepareConfig(resolution=32, channels=3), work / "prepared", work / "grid.png")
        rates: dict[str, list[float]] = {}
        for repeat in range(args.repeats):
            for arch in ARCHS:
                print(f"repeat {repeat + 1}/{args.repeats}: {arch} ...", flush=True)
                rates.setdefault(arch, []).append(
                    run_train(work, f"{arch}{repeat}", {"arch": arch, "kimg": args.kimg}, nproc=1, threads=2))
            for name, nproc, threads in (("1x2", 1, 2), ("2x1", 2, 1)):
                print(f"repeat {repeat + 1}/{args.repeats}: DDP {name} ...", flush=True)
                rates.setdefault(name, []).append(
                    run_train(work, f"ddp{name}{repeat}", {"kimg": args.kimg}, nproc=nproc, threads=threads))
    results["batch_size"] = read_params(REPO / "params.yaml")["train"]["batch_size"]
    results["archs"] = {arch: summary(rates[arch]) for arch in ARCHS}
    results["ddp"] = {"1_process_2_threads": summary(rates["1x2"]), "2_processes_1_thread": summary(rates["2x1"])}
    results["ddp"]["ratio"] = round(results["ddp"]["2_processes_1_thread"]["img_per_s"]
                                    / results["ddp"]["1_process_2_threads"]["img_per_s"], 2)
    save_results(RESULTS, results, render)


def render(results: dict) -> None:
    seed = results["archs"]["seed"]["img_per_s"]
    lines = [machine_line(results["machine"]), "",
             f"The train stage at 32×32×3, global batch {results['batch_size']}, {results['kimg_per_run']:g} kimg "
             f"per run, 2 threads; median of {results['archs']['seed']['runs']} interleaved runs (min–max).", "",
             "| arch | train images/s | vs `seed` |", "|---|---|---|"]
    for arch, r in results["archs"].items():
        lines.append(f"| `{arch}` | {r['img_per_s']:,} ({r['img_per_s_min']:,}–{r['img_per_s_max']:,}) | "
                     f"{r['img_per_s'] / seed:.2f}× |")
    d = results["ddp"]
    one, two = d["1_process_2_threads"], d["2_processes_1_thread"]
    lines += ["", "| `seed` under torchrun | train images/s |", "|---|---|",
              f"| 1 process × 2 threads | {one['img_per_s']:,} ({one['img_per_s_min']:,}–{one['img_per_s_max']:,}) |",
              f"| 2 gloo processes × 1 thread | {two['img_per_s']:,} ({two['img_per_s_min']:,}–"
              f"{two['img_per_s_max']:,}) |",
              f"| ratio (goal ≥ 0.8) | {d['ratio']:.2f} |"]
    write_doc_section("train-throughput", lines)


if __name__ == "__main__":
    main()
