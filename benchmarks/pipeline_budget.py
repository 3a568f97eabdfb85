"""Measure the pipeline's budgets: wall time and peak memory of the default `dvc repro` from scratch, the
no-op rerun, and (with --tests) the test suite. Results go to bench/pipeline_budget.json and into the
generated section of docs/benchmarks.md.

    python benchmarks/pipeline_budget.py [--tests]

The repro runs in a temporary copy of the working tree (tracked and not-ignored files), so the checkout's
own outputs are untouched. Peak memory is the largest summed RSS of the whole process tree (dvc plus the
running stage), sampled every 0.1 s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from measure import REPO, machine, machine_line, save_results, timed, write_doc_section

from ganforge.benchmarking.sections import copy_worktree

RESULTS = REPO / "bench/pipeline_budget.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", action="store_true", help="also time the test suite (python -m pytest)")
    args = parser.parse_args()
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    results = {"machine": machine()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "ganforge"
        copy_worktree(REPO, work)
        for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
            subprocess.run(cmd, cwd=work, env=env | {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b",
                                                      "GIT_COMMITTER_NAME": "b", "GIT_COMMITTER_EMAIL": "b@b"},
                           check=True)
        dvc = [sys.executable, "-m", "dvc", "repro", "--force"]
        print("timing the default dvc repro from scratch ...", flush=True)
        results["repro_default"] = timed(dvc, work, env)
        print("timing the no-op dvc repro ...", flush=True)
        results["repro_noop"] = timed(dvc[:-1], work, env)
        results["repro_default"]["metrics"] = {
            "evaluate_fid": json.loads((work / "metrics/evaluate.json").read_text())["fid"],
            "optimize_winner": json.loads((work / "metrics/optimize.json").read_text())["winner"],
        }
    if args.tests:
        print("timing the test suite ...", flush=True)
        results["test_suite"] = timed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], REPO, env)

    save_results(RESULTS, results, render)


def render(results: dict) -> None:
    rows = [machine_line(results["machine"]), "",
            "| what | wall time | peak memory (process tree) | budget |", "|---|---|---|---|"]
    budgets = {"repro_default": "10 min, 4 GB", "repro_noop": "—", "test_suite": "15 min"}
    labels = {"repro_default": "default `dvc repro` from scratch", "repro_noop": "no-op `dvc repro`",
              "test_suite": "test suite (`pytest`)"}
    for key, label in labels.items():
        if key in results:
            r = results[key]
            rows.append(f"| {label} | {r['wall_s']:.0f} s | {r['peak_rss_mib']} MiB | {budgets[key]} |")
    write_doc_section("pipeline-budget", rows)


if __name__ == "__main__":
    main()
