"""Seeded latents that do not depend on batch size: image i always gets the same z for a given seed."""

from __future__ import annotations

import torch

_CHUNK = 256  # latents are drawn in fixed chunks, each from its own seeded generator


def latents(seed: int, start: int, count: int, z_dim: int) -> torch.Tensor:
    """Standard-normal latents for images ``start .. start+count-1`` of the stream ``seed``. (count, z_dim)."""
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
    return stream[offset:offset + count]
