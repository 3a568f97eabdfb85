"""Machine facts a figure depends on, read once: the CPU's model and instruction-set flags, cores, threads and
library versions, and the sentence a page of figures opens with."""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

import torch

REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_int8")


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]] | None:
    """(model name, instruction-set flags) from /proc/cpuinfo; None where it cannot be read."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    fields = {}
    for line in lines:
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields.get("model name", ""), frozenset(fields.get("flags", "").split())


def cpu_model() -> str:
    info = cpu_info()
    return (info[0] if info and info[0] else "") or platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The SIMD/matrix flags that decide which kernels run (AVX2, AVX-512, VNNI, AMX), of :data:`REPORTED_FLAGS`."""
    info = cpu_info()
    return [flag for flag in REPORTED_FLAGS if info and flag in info[1]]


def has_any_flag(wanted: set[str]) -> bool | None:
    """Whether the CPU has any of ``wanted``; None where its flags cannot be read."""
    info = cpu_info()
    return None if info is None else bool(info[1] & wanted)


def cpu_identity() -> str:
    """The CPU's model and every flag, one string: what code compiled with ``-march=native`` depends on."""
    info = cpu_info()
    if info is None:
        return f"{platform.machine()} {platform.processor()}"
    return f"{info[0]}\n{' '.join(sorted(info[1]))}"


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
