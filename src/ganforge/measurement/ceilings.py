"""What this machine can do at best, measured in the same run as the figures compared with it: the fp32 and
int8 matrix-multiply rates, memory bandwidth, and on CUDA the bf16 matrix rate."""

from __future__ import annotations

import torch
from torch import nn

from ganforge.measurement.speed import Timing
from ganforge.measurement.timing import rate_spread


class GemmProbe(nn.Module):
    """This machine's fp32 matrix-multiply rate, measured as a module that :func:`time_generators` times side by
    side with the generators, so the ceiling and the rates compared with it share every spell of machine load:
    each call multiplies two fixed (size x size) matrices and ignores its input.

    Args:
        size: side of the square matrices.
    """

    def __init__(self, size: int = 1024) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.a, self.b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
        self.flops = 2 * size**3  # a multiply-add counts 2

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.a @ self.b

    def gflops(self, timing: Timing) -> float:
        """GFLOP/s from this probe's median time per call."""
        return self.flops / (timing.ms_per_batch / 1e3) / 1e9


def fp32_gemm_gflops(size: int = 1024, repeats: int = 15) -> dict[str, float]:
    """GFLOP/s of :class:`GemmProbe`'s (size x size) @ (size x size) in float32, over ``repeats`` calls."""
    probe = GemmProbe(size)
    return rate_spread(lambda: probe(None), probe.flops / 1e9, repeats, warmup=3)


def int8_gemm_gops(size: int = 1024, repeats: int = 15) -> dict[str, float] | None:
    """GOP/s of an int8 x int8 -> int32 matrix multiply (``torch._int_mm``); None where torch has no kernel."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=gen)
    b = torch.randint(-128, 128, (size, size), dtype=torch.int8, generator=gen)
    try:
        torch._int_mm(a, b)
    except (RuntimeError, NotImplementedError):
        return None
    return rate_spread(lambda: torch._int_mm(a, b), 2 * size**3 / 1e9, repeats, warmup=3)


def memory_bandwidth_gbs(mib: int = 256, repeats: int = 10) -> dict[str, float]:
    """GB/s of copying a ``mib`` MiB float32 buffer into another (bytes read + bytes written)."""
    source = torch.ones(mib * 2**20 // 4)
    target = torch.empty_like(source)
    return rate_spread(lambda: target.copy_(source), 2 * source.numel() * 4 / 1e9, repeats)


def cuda_bf16_tflops(size: int = 8192, repeats: int = 20) -> dict[str, float] | None:
    """TFLOP/s of a bf16 (size x size) matrix multiply on the first CUDA device; None without CUDA."""
    if not torch.cuda.is_available():
        return None
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)

    def matmul() -> None:
        a @ b
        torch.cuda.synchronize()

    return rate_spread(matmul, 2 * size**3 / 1e12, repeats, warmup=3)


def measure_ceilings(quick: bool) -> dict:
    """Every ceiling this machine has; ``quick`` takes fewer repeats."""
    repeats = 5 if quick else 15
    return {"fp32_gemm_gflops": fp32_gemm_gflops(repeats=repeats), "int8_gemm_gops": int8_gemm_gops(repeats=repeats),
            "memory_bandwidth_gbs": memory_bandwidth_gbs(repeats=max(3, repeats // 2)),
            "cuda_bf16_tflops": cuda_bf16_tflops()}
