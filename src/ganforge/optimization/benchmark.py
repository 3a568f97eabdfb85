"""Measured generation speed: warm up, time interleaved repeats, report the median and spread."""

from __future__ import annotations

import io
import math
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

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
    modules alike instead of biasing whichever ran during a noisy spell.
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
