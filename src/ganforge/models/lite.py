"""``lite``: a small generator built for fast inference and int8.

Upsampling is nearest-neighbour followed by a 3x3 conv (no transposed convs, which int8 backends handle
poorly), and FastGAN-style skip-layer excitation (SLE) lets a coarse feature map gate the channels of a
map two doublings finer, giving the fine layers global context at almost no cost.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# Generator channels at each side for width 1.0, halving per doubling so every block costs about the same;
# a width multiplier scales them (never below _MIN_CHANNELS). D mirrors them at twice the width.
_CHANNELS = {4: 64, 8: 32, 16: 16, 32: 8, 64: 8, 128: 8, 256: 8}
_MIN_CHANNELS = 8


def _channels(side: int, width: float) -> int:
    return max(_MIN_CHANNELS, round(_CHANNELS[side] * width))


class SkipLayerExcitation(nn.Module):
    """Channel gates for a fine map computed from a coarse one (FastGAN's SLE).

    Args:
        coarse_channels: channels of the coarse map.
        fine_channels: channels of the fine map being gated.
        coarse_side: side of the coarse map (a power of two >= 4); it is average-pooled to 4x4.

    Input: coarse (B, Cc, s, s), fine (B, Cf, H, W). Output: fine * gate, gate (B, Cf, 1, 1) in (0, 1).
    """

    def __init__(self, coarse_channels: int, fine_channels: int, coarse_side: int) -> None:
        super().__init__()
        assert coarse_side >= 4 and coarse_side % 4 == 0, coarse_side
        self.gate = nn.Sequential(
            # A fixed pool rather than AdaptiveAvgPool2d, which ONNX cannot export with a dynamic batch.
            nn.AvgPool2d(coarse_side // 4) if coarse_side > 4 else nn.Identity(),
            nn.Conv2d(coarse_channels, fine_channels, kernel_size=4, bias=False),  # (B, Cf, 1, 1)
            nn.LeakyReLU(0.1),
            nn.Conv2d(fine_channels, fine_channels, kernel_size=1, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        return fine * self.gate(coarse)


def _up_block(ch_in: int, ch_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                         nn.Conv2d(ch_in, ch_out, kernel_size=3, padding=1, bias=False),
                         nn.BatchNorm2d(ch_out), nn.ReLU())


class LiteGenerator(nn.Module):
    """Linear projection to (C4, 4, 4), nearest-upsample + 3x3 conv blocks with SLE up to half the resolution,
    then a last upsample whose 3x3 conv goes straight to RGB (the full-resolution layer is the costliest, so
    it has only the output channels).

    Args:
        z_dim: latent size.
        resolution: output side in pixels, a power of two >= 8.
        channels: output channels (1 or 3).
        width: multiplier of every layer's channel count (1.0: 64 at 4x4, halving per doubling).

    Input: z (B, z_dim). Output: images (B, channels, resolution, resolution) in [-1, 1].
    """

    def __init__(self, z_dim: int, resolution: int, channels: int, width: float = 1.0) -> None:
        super().__init__()
        self.z_dim, self.resolution, self.channels = z_dim, resolution, channels
        doublings = int(math.log2(resolution // 4))
        assert 4 * 2**doublings == resolution and doublings >= 1, resolution
        sides = [4 * 2**i for i in range(doublings)]  # 4, 8, ..., resolution / 2
        widths = [_channels(s, width) for s in sides]
        self.start_channels = widths[0]
        self.project = nn.Sequential(nn.Linear(z_dim, widths[0] * 16, bias=False), nn.BatchNorm1d(widths[0] * 16),
                                     nn.ReLU())
        self.blocks = nn.ModuleList(_up_block(c_in, c_out) for c_in, c_out in zip(widths[:-1], widths[1:], strict=True))
        # Block k (output side 8 * 2^k) is gated by the map two doublings coarser, when there is one.
        self.excite = nn.ModuleDict({str(k): SkipLayerExcitation(widths[k - 1], widths[k + 1], sides[k - 1])
                                     for k in range(1, len(self.blocks))})
        self.to_rgb = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                    nn.Conv2d(widths[-1], channels, kernel_size=3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).reshape(-1, self.start_channels, 4, 4)  # (B, C4, 4, 4)
        maps = [h]
        for k, block in enumerate(self.blocks):
            h = block(h)  # (B, C_k, 8 * 2^k, 8 * 2^k)
            if str(k) in self.excite:
                h = self.excite[str(k)](maps[k - 1], h)
            maps.append(h)
        return self.to_rgb(h)  # (B, C, R, R)


class _DownBlock(nn.Module):
    """Halve the side: a strided 4x4 conv averaged with a pooled 1x1 shortcut (FastGAN's D block, one conv deep)."""

    def __init__(self, ch_in: int, ch_out: int) -> None:
        super().__init__()
        self.main = nn.Sequential(nn.Conv2d(ch_in, ch_out, kernel_size=4, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(ch_out), nn.LeakyReLU(0.2))
        self.shortcut = nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(ch_in, ch_out, kernel_size=1, bias=False),
                                      nn.BatchNorm2d(ch_out), nn.LeakyReLU(0.2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.main(x) + self.shortcut(x)) / 2


class LiteDiscriminator(nn.Module):
    """FastGAN-style down blocks to 4x4, then a 4x4 valid conv to one logit.

    Args:
        resolution: input side in pixels, a power of two >= 8.
        channels: input channels.
        width: multiplier of the channel counts (the generator's ``_CHANNELS`` mirrored at twice the width).

    Input: images (B, channels, resolution, resolution) in [-1, 1]. Output: logits (B,).
    """

    def __init__(self, resolution: int, channels: int, width: float = 1.0) -> None:
        super().__init__()
        doublings = int(math.log2(resolution // 4))
        sides = [resolution // 2**i for i in range(1, doublings + 1)]  # R/2, ..., 4
        widths = [_channels(2 * s, 2 * width) for s in sides]  # (R/2: 2 * C_R, ..., 4: 2 * C_8)
        self.down = nn.Sequential(*(_DownBlock(c_in, c_out)
                                    for c_in, c_out in zip([channels, *widths[:-1]], widths, strict=True)))
        self.head = nn.Conv2d(widths[-1], 1, kernel_size=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.down(x)  # (B, C, 4, 4)
        return self.head(h).flatten()  # (B,)
