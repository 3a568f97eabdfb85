"""Timing helpers shared by ``ganforge bench`` and the scripts in benchmarks/: spreads of repeated
measurements, process-tree wall time and memory, machine facts, and generated sections of a markdown page."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

from ganforge.errors import UserError
from ganforge.files import read_text

_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements (the median is the figure; min–max shows the noise)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def rate_spread(work: Callable[[], None], amount: float, repeats: int, warmup: int = 2) -> dict[str, float]:
    """``amount`` per second of ``work()`` (for example images per call), over ``repeats`` timed calls."""
    for _ in range(warmup):
        work()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        rates.append(amount / (time.perf_counter() - start))
    return spread(rates)


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
        raise UserError(f"{' '.join(map(str, cmd))} failed: {output.strip().splitlines()[-1:] or ['no output']}")
    return {"wall_s": time.perf_counter() - start, "peak_rss_mib": peak[0] / 2**20}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD/matrix flags that decide which kernels run (AVX2, AVX-512, VNNI, AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [flag for flag in _FLAGS if flag in present]
    except OSError:
        pass
    return []


def machine() -> dict:
    """The facts a figure depends on: CPU, flags, cores, pinned thread count and library versions."""
    import onnxruntime

    facts = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "torch": torch.__version__,
             "onnxruntime": onnxruntime.__version__, "python": platform.python_version(),
             "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        facts["cuda_device"] = torch.cuda.get_device_name(0)
    return facts


def machine_line(m: dict) -> str:
    """The sentence a page opens with: cores, CPU and its vector flags (the same model name comes with and
    without AVX-512), torch and Python."""
    flags = ("flags not recorded" if "cpu_flags" not in m
             else ", ".join(m["cpu_flags"]) or "none of AVX2, AVX-512 or AMX")
    return f"Measured on {m['cores']} cores ({m['cpu']}; {flags}), torch {m['torch']}, Python {m['python']}."


def write_doc_section(doc: Path, name: str, lines: list[str]) -> None:
    """Replace (or append) the generated section ``name`` of the markdown page ``doc``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = "\n".join([begin, *lines, end])
    text = read_text(doc) if doc.exists() else ""
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text += "\n" + section + "\n"
    doc.write_text(text)
