"""Exponential moving average of generator weights, with its decay set by a half-life in kimg."""

from __future__ import annotations

import copy

import torch
from torch import nn


class GeneratorEMA:
    """Keeps ``average``, an EMA copy of a generator.

    Args:
        generator: the module being trained.
        half_life_kimg: images (in thousands) after which an old weight's share halves; 0 copies exactly.
    """

    def __init__(self, generator: nn.Module, half_life_kimg: float) -> None:
        self.average = copy.deepcopy(generator).eval().requires_grad_(False)
        self.half_life_kimg = half_life_kimg

    @torch.no_grad()
    def update(self, generator: nn.Module, batch_nimg: int) -> None:
        """Blend in the current weights after a step that showed ``batch_nimg`` images."""
        beta = 0.5 ** (batch_nimg / (self.half_life_kimg * 1000)) if self.half_life_kimg > 0 else 0.0
        for p_avg, p in zip(self.average.parameters(), generator.parameters(), strict=True):
            p_avg.lerp_(p.detach(), 1.0 - beta)
        # Buffers (BatchNorm statistics) are copied, not averaged: they describe the current weights.
        for b_avg, b in zip(self.average.buffers(), generator.buffers(), strict=True):
            b_avg.copy_(b)
