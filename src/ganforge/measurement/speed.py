"""Measurements of generators: speed (warm up, interleaved repeats, median and spread), FLOPs counted by
torch's FlopCounterMode and peak memory. The fp32 GEMM rate they are compared with is
:class:`ganforge.measurement.ceilings.GemmProbe`, timed alongside them."""

from __future__ import annotations

import io
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

_MIN_SAMPLE_S = 0.01  # each timed sample loops the call until it spans at least this long


@dataclass(frozen=True)
class Timing:
    """Images per second at one batch size.

    Args:
        batch: latents per call.
        img_per_s: median over repeats.
        img_per_s_min, img_per_s_max: spread over repeats.
        ms_per_batch: median wall time of one call.
    """

    batch: int
    img_per_s: float
    img_per_s_min: float
    img_per_s_max: float
    ms_per_batch: float


@torch.inference_mode()
def time_generators(modules: dict[str, nn.Module], z_dim: int, batch: int, warmup: int, repeats: int,
                    seed: int = 0) -> dict[str, Timing]:
    """Time ``module(z)`` for z of shape (batch, z_dim), for every module side by side.

    Repeats are interleaved (one sample of each module per round), so drift in machine load affects all
    modules alike instead of biasing whichever ran during a noisy spell. Each sample starts with one untimed
    call: the module before it in the round has evicted this one's weights and buffers from the caches, and a
    module generating in bulk runs back to back, warm.
    """
    z = torch.randn(batch, z_dim, generator=torch.Generator().manual_seed(seed))  # (batch, z_dim)
    loops = {}
    for name, module in modules.items():
        for _ in range(warmup):
            module(z)
        start = time.perf_counter()
        module(z)
        loops[name] = max(1, math.ceil(_MIN_SAMPLE_S / max(time.perf_counter() - start, 1e-9)))
    seconds: dict[str, list[float]] = {name: [] for name in modules}
    for _ in range(repeats):
        for name, module in modules.items():
            module(z)  # warm again after the other modules
            start = time.perf_counter()
            for _ in range(loops[name]):
                module(z)
            seconds[name].append((time.perf_counter() - start) / loops[name])
    timings = {}
    for name, samples in seconds.items():
        median_s = statistics.median(samples)
        timings[name] = Timing(batch, batch / median_s, batch / max(samples), batch / min(samples), median_s * 1e3)
    return timings


def serialized_bytes(module: nn.Module) -> int:
    """Size of the module's state dict as torch.save writes it: one measure that fits float and int8 alike."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def parameter_count(module: nn.Module) -> int:
    """Number of parameter elements of a float module."""
    return sum(p.numel() for p in module.parameters())


def flops_per_image(module: nn.Module, z_dim: int) -> int:
    """Floating-point operations of one generated image (a multiply-add counts 2), counted by torch's
    FlopCounterMode on a float module (convolutions, transposed convolutions and matrix products)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        module(torch.zeros(1, z_dim))
    return int(counter.get_total_flops())


@contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """Send the process's file descriptor 2 to /dev/null for the block: the profiler's native library writes
    start/stop lines there on every profile, which would litter the optimize stage's output."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@torch.inference_mode()
def peak_tensor_mib(module: nn.Module, z_dim: int, batch: int) -> float:
    """Peak bytes of tensors alive during one call at ``batch``, beyond the input, from the profiler's
    allocation events (torch modules; for ONNX Runtime see :func:`onnx_peak_rss_mib`)."""
    z = torch.zeros(batch, z_dim)
    module(z)  # first-call allocations (packed weights, caches) are not per-call memory
    with _native_stderr_muted(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        module(z)
    events = sorted((e for e in prof.events() if e.cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


_ONNX_PEAK_SCRIPT = """
import sys, threading, time
import numpy as np, onnxruntime as ort, psutil
path, batch, z_dim, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
process, done = psutil.Process(), threading.Event()
before = peak = process.memory_info().rss
def sample():
    global peak
    while not done.is_set():
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.0005)
sampler = threading.Thread(target=sample)
sampler.start()
options = ort.SessionOptions()
options.intra_op_num_threads = threads
session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
session.run(None, {session.get_inputs()[0].name: np.zeros((batch, z_dim), dtype=np.float32)})
peak = max(peak, process.memory_info().rss)
done.set()
sampler.join()
print((peak - before) / 2**20)
"""


def onnx_peak_rss_mib(onnx_bytes: bytes, z_dim: int, batch: int, threads: int = 0) -> float:
    """Growth of resident memory while a fresh ONNX Runtime session is created and run once at ``batch``,
    sampled every half millisecond in a new process: ONNX Runtime's arena is invisible to torch's profiler,
    and in this process freed torch memory would be reused without showing. Allocations above 64 KiB are
    forced to fresh pages (``MALLOC_MMAP_THRESHOLD_``) so reuse cannot hide them there either."""
    with tempfile.TemporaryDirectory(prefix="ganforge-peak-") as tmp:
        path = Path(tmp) / "generator.onnx"
        path.write_bytes(onnx_bytes)
        result = subprocess.run(
            [sys.executable, "-c", _ONNX_PEAK_SCRIPT, str(path), str(batch), str(z_dim), str(threads)],
            capture_output=True, text=True, check=True, env=os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536"})
    return float(result.stdout.strip().splitlines()[-1])
