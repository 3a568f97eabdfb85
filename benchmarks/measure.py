"""Shared helpers of the benchmark scripts: timing a command's process tree, machine facts, doc sections."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs/benchmarks.md"


def timed(cmd: list[str], cwd: Path, env: dict | None = None) -> dict:
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
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{output[-4000:]}")
    return {"wall_s": round(time.perf_counter() - start, 1), "peak_rss_mib": round(peak[0] / 2**20)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads()}


def machine_line(m: dict) -> str:
    return f"Measured on {m['cores']} cores ({m['cpu']}), torch {m['torch']}, Python {m['python']}."


def write_doc_section(name: str, lines: list[str]) -> None:
    """Replace (or append) the generated section ``name`` of docs/benchmarks.md."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = "\n".join([begin, *lines, end])
    text = DOC.read_text() if DOC.exists() else ""
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text += "\n" + section + "\n"
    DOC.write_text(text)


def save_results(path: Path, results: dict, render: Callable[[dict], None]) -> None:
    """Write the raw results JSON, regenerate the benchmark's section of docs/benchmarks.md, print a summary."""
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    render(results)
    print(json.dumps({k: v for k, v in results.items() if k not in ("rows", "layer_profile_batch256")}, indent=2))
