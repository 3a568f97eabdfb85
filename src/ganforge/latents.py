"""Seeded latents that do not depend on batch size: image i always gets the same z for a given seed.

Truncation (``psi``) draws from a standard normal truncated at ±psi: less randomness, more typical images.
It maps each standard-normal draw through the inverse CDF of the truncated normal, so image i keeps its
place in the stream (its z only moves toward the centre) and the mapping can wrap a generator that receives
plain normal latents, as torch-fidelity's generator wrapper provides.
"""

from __future__ import annotations

import torch
from torch import nn

_CHUNK = 256  # latents are drawn in fixed chunks, each from its own seeded generator


def truncate(z: torch.Tensor, psi: float) -> torch.Tensor:
    """Map standard-normal ``z`` (any shape) to a normal truncated at ±``psi`` by inverse-CDF transform."""
    assert psi > 0, psi
    low = torch.special.ndtr(torch.tensor(-psi, dtype=torch.float64))  # Phi(-psi)
    u = torch.special.ndtr(z.double())  # uniform in (0, 1)
    mapped = torch.special.ndtri(low + (1 - 2 * low) * u)  # in (-psi, psi)
    return mapped.clamp(-psi, psi).to(z.dtype)


def latents(seed: int, start: int, count: int, z_dim: int, psi: float | None = None) -> torch.Tensor:
    """Latents for images ``start .. start+count-1`` of the stream ``seed``: standard normal, or truncated
    at ±``psi`` when given. (count, z_dim)."""
    assert start >= 0 and count >= 0, (start, count)
    first, last = start // _CHUNK, (start + count - 1) // _CHUNK if count else start // _CHUNK - 1
    chunks = [
        torch.randn(_CHUNK, z_dim, generator=torch.Generator().manual_seed(seed * 1_000_003 + k))
        for k in range(first, last + 1)
    ]
    if not chunks:
        return torch.empty(0, z_dim)
    stream = torch.cat(chunks)  # (chunks * _CHUNK, z_dim)
    offset = start - first * _CHUNK
    z = stream[offset:offset + count]
    return z if psi is None else truncate(z, psi)


class Truncated(nn.Module):
    """``generator`` fed with normal latents truncated at ±``psi`` (from the standard-normal z it is given)."""

    def __init__(self, generator: nn.Module, psi: float) -> None:
        super().__init__()
        self.generator, self.psi = generator, psi

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(truncate(z, self.psi))
