"""The whole pipeline on real data with Inception on: wall time and peak memory of every stage.

    python benchmarks/real_data_pipeline.py [--archive ../shared/datasets/cifar10-jpeg.tar.gz]

In a temporary copy of the working tree (tracked and not-ignored files) it runs, verbatim,

    dvc exp run -S prepare.source=archive -S prepare.path=ARCHIVE -S reference.feature_extractor=inception-v3-compat

with the default params otherwise, and records each stage's wall time and the peak summed RSS of the process
tree while it ran (sampled every 0.1 s), what Inception added to each stage, and the figures the run wrote
(``metrics/evaluate.json``: domain and Inception FID with its protocol). Needs the ``[inception]`` extra.
Results go to bench/real_data_pipeline.json and the generated section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from measure import DEFAULT_ARCHIVE, REPO, machine, machine_line, save_results, targets, write_doc_section

from ganforge.benchmarking.sections import copy_worktree

RESULTS = REPO / "bench/real_data_pipeline.json"
TARGETS = targets(evaluate_optimize_domain_s="real_data_evaluate_optimize_s", peak_rss_mib="real_data_peak_mib")


def staged_run(cmd: list[str], cwd: Path, env: dict) -> dict[str, dict]:
    """Run ``cmd`` (a dvc command), attributing wall time and peak process-tree RSS to the stage dvc names in
    its latest ``Running stage '...'`` line."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stages: dict[str, dict] = {}
    current = ["(dvc)"]

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                rss = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)] if p.is_running())
                row = stages.setdefault(current[0], {"wall_s": 0.0, "peak_rss_mib": 0.0, "start": time.time()})
                row["peak_rss_mib"] = max(row["peak_rss_mib"], rss / 2**20)
            except psutil.Error:
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    log = []
    for line in proc.stdout:
        log.append(line)
        print(line, end="", flush=True)
        if match := re.search(r"Running stage '([^']+)'", line):
            if current[0] in stages:
                stages[current[0]]["wall_s"] = time.time() - stages[current[0]]["start"]
            current[0] = match.group(1)
            stages[current[0]] = {"wall_s": 0.0, "peak_rss_mib": 0.0, "start": time.time()}
    proc.wait()
    sampler.join()
    stages[current[0]]["wall_s"] = time.time() - stages[current[0]]["start"]
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{''.join(log[-30:])}")
    for row in stages.values():
        row.pop("start")
        row["wall_s"], row["peak_rss_mib"] = round(row["wall_s"], 1), round(row["peak_rss_mib"])
    stages.pop("(dvc)", None)
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--work", type=Path, help="run in this (new) directory and keep it, for example to "
                                                  "seed benchmarks/time_to_quality.py --work with its outputs")
    args = parser.parse_args()
    if not args.archive.is_file():
        sys.exit(f"{args.archive}: CIFAR-10 JPEG archive not found; this benchmark needs real data")
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                        "DVC_NO_ANALYTICS": "1"}
    overrides = {"prepare.source": "archive", "prepare.path": str(args.archive.resolve()),
                 "reference.feature_extractor": "inception-v3-compat"}
    results: dict = {"machine": machine(), "overrides": overrides, "targets": TARGETS}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work.resolve() if args.work else Path(tmp) / "ganforge"
        copy_worktree(REPO, work)
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
            subprocess.run(cmd, cwd=work, env=env | {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
                                                      "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"},
                           check=True)
        sets = [arg for key, value in overrides.items() for arg in ("-S", f"{key}={value}")]
        cmd = [sys.executable, "-m", "dvc", "exp", "run", *sets]
        results["stages"] = staged_run(cmd, work, env)
        metrics = {name: json.loads((work / "metrics" / f"{name}.json").read_text())
                   for name in ("reference", "evaluate", "evaluate_speed", "optimize", "featurizer")}
    ref = metrics["reference"]["inception"]
    results["inception_s"] = {
        "reference": sum(ref[s]["count"] / ref[s]["extract_img_per_s"] for s in ("train", "test")),
        "evaluate": metrics["evaluate_speed"]["scoring_s"]["inception"],
        "optimize": 0.0,  # optimize.fid_units: domain (the default) never runs Inception
    }
    results["evaluate"] = {k: v for k, v in metrics["evaluate"].items() if k != "truncation"}
    results["optimize"] = {k: metrics["optimize"][k] for k in ("winner", "winner_speedup", "winner_fid",
                                                                "baseline_fid")}
    results["featurizer"] = metrics["featurizer"]
    save_results(RESULTS, results, render)


def render(results: dict) -> None:
    s, e, t = results["stages"], results["evaluate"], results["targets"]
    added = results["inception_s"]
    domain_s = s["evaluate"]["wall_s"] - added["evaluate"] + s["optimize"]["wall_s"]
    peak = max(r["peak_rss_mib"] for r in s.values())
    protocol = next(v for k, v in e.items() if k.startswith("protocol_inception_"))
    fid_key = next(k for k in e if k.startswith("fid_inception_"))
    floor_key = next(k for k in e if k.startswith("fid_real_floor_inception_"))
    lines = [machine_line(results["machine"]), "",
             "`dvc exp run -S prepare.source=archive -S prepare.path=…/cifar10-jpeg.tar.gz -S "
             "reference.feature_extractor=inception-v3-compat`, default params otherwise (`seed`, "
             f"{results['featurizer']['test_accuracy']:.3f} featurizer test accuracy), from scratch:", "",
             "| stage | wall time | of which Inception | peak memory (process tree) |", "|---|---|---|---|"]
    for name, row in s.items():
        inception = f"{added[name]:.0f} s" if added.get(name) else "—"
        lines.append(f"| `{name}` | {row['wall_s']:.0f} s | {inception} | {row['peak_rss_mib']:,} MiB |")
    met = domain_s <= t["evaluate_optimize_domain_s"]
    lines += ["", "| target | measured | |", "|---|---|---|",
              f"| evaluate + optimize in domain units (without the Inception scoring), 60,000 images at 32×32 | "
              f"{domain_s:.0f} s | ≤ {t['evaluate_optimize_domain_s']:g} s: {'met' if met else '**missed**'} |",
              f"| peak memory of any stage | {peak:,} MiB | ≤ {t['peak_rss_mib']:,g} MiB: "
              f"{'met' if peak <= t['peak_rss_mib'] else '**missed**'} |", "",
              f"`metrics/evaluate.json`: `{fid_key}` {e[fid_key]:.2f} (real-vs-real `{floor_key}` {e[floor_key]:.2f}), "
              f"domain `fid` {e['fid']:.3f}, recall {e['recall']:.3f}; protocol: {protocol['num_samples']:,} generated "
              f"against {protocol['reference_count']:,} `{protocol['reference_split']}` images "
              f"(`reference.max_samples` {protocol['reference_max_samples']:,}), {protocol['resize']}, weights sha256 "
              f"`{protocol['feature_extractor_sha256'][:16]}…`. `isc_inception_absent`: "
              f"{e.get('isc_inception_absent', 'no (the weights have logits)')}."]
    write_doc_section("real-data-pipeline", lines)


if __name__ == "__main__":
    main()
