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
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench/pipeline_budget.json"
DOC = REPO / "docs/benchmarks.md"
BEGIN, END = "<!-- pipeline-budget:begin -->", "<!-- pipeline-budget:end -->"


def timed(cmd: list[str], cwd: Path, env: dict) -> dict:
    """Run ``cmd``; return wall seconds and the peak summed RSS of its process tree in MiB."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample() -> None:
        root = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{output[-4000:]}")
    return {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_mib": round(peak[0] / 2**20)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def clone_worktree(dest: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.splitlines()
    for name in listed:
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tests", action="store_true", help="also time the test suite (python -m pytest)")
    args = parser.parse_args()
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    results = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "ganforge"
        clone_worktree(work)
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

    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    write_doc_section(results)
    print(json.dumps(results, indent=2))


def write_doc_section(results: dict) -> None:
    m = results["machine"]
    rows = [f"Measured on {m['cores']} cores ({m['cpu']}), torch {m['torch']}, Python {m['python']}.", "",
            "| what | wall time | peak memory (process tree) | budget |", "|---|---|---|---|"]
    budgets = {"repro_default": "10 min, 4 GB", "repro_noop": "—", "test_suite": "15 min"}
    labels = {"repro_default": "default `dvc repro` from scratch", "repro_noop": "no-op `dvc repro`",
              "test_suite": "test suite (`pytest`)"}
    for key, label in labels.items():
        if key in results:
            r = results[key]
            rows.append(f"| {label} | {r['wall_s']:.0f} s | {r['peak_rss_mib']} MiB | {budgets[key]} |")
    section = "\n".join([BEGIN, *rows, END])
    text = DOC.read_text() if DOC.exists() else ""
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text += "\n" + section + "\n"
    DOC.write_text(text)


if __name__ == "__main__":
    main()
