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
        rampup: when above 0, the half-life is at most ``rampup`` times the images shown so far, so the
            average forgets the random initial weights early in a run (StyleGAN2-ADA's ramp).
    """

    def __init__(self, generator: nn.Module, half_life_kimg: float, rampup: float = 0.0) -> None:
        self.average = copy.deepcopy(generator).eval().requires_grad_(False)
        self.half_life_kimg = half_life_kimg
        self.rampup = rampup

    def half_life_nimg(self, cur_nimg: int) -> float:
        """The half-life, in images, after ``cur_nimg`` images have been shown."""
        half_life = self.half_life_kimg * 1000
        return min(half_life, cur_nimg * self.rampup) if self.rampup > 0 else half_life

    @torch.no_grad()
    def update(self, generator: nn.Module, batch_nimg: int, cur_nimg: int) -> None:
        """Blend in the current weights after a step that showed ``batch_nimg`` images, ``cur_nimg`` in all."""
        half_life = self.half_life_nimg(cur_nimg)
        beta = 0.5 ** (batch_nimg / half_life) if half_life > 0 else 0.0
        for p_avg, p in zip(self.average.parameters(), generator.parameters(), strict=True):
            p_avg.lerp_(p.detach(), 1.0 - beta)
        # Buffers (BatchNorm statistics) are copied, not averaged: they describe the current weights.
        for b_avg, b in zip(self.average.buffers(), generator.buffers(), strict=True):
            b_avg.copy_(b)
