"""DCGAN (Radford et al., 2015): transposed-conv generator, strided-conv discriminator, BatchNorm in both."""

from __future__ import annotations

import math

import torch
from torch import nn


def _doublings(resolution: int) -> int:
    doublings = int(math.log2(resolution // 4))
    assert 4 * 2**doublings == resolution and doublings >= 1, f"resolution must be 4 * 2^k >= 8, got {resolution}"
    return doublings


def _width(base: int, width: float) -> int:
    return max(8, round(base * width))


class DCGANGenerator(nn.Module):
    """z as a 1x1 map -> 4x4 transposed conv -> stride-2 transposed convs halving the channels -> tanh.

    Args:
        z_dim: latent size.
        resolution: output side in pixels, a power of two >= 8.
        channels: output channels (1 or 3).
        width: multiplier of the channel counts (64 * 2^k at width 1, the paper's ngf = 64).

    Input: z (B, z_dim). Output: images (B, channels, resolution, resolution) in [-1, 1].
    """

    def __init__(self, z_dim: int, resolution: int, channels: int, width: float = 1.0) -> None:
        super().__init__()
        self.z_dim, self.resolution, self.channels = z_dim, resolution, channels
        doublings = _doublings(resolution)
        ch = _width(64 * 2 ** (doublings - 1), width)
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim, ch, kernel_size=4, stride=1, padding=0, bias=False),
                                   nn.BatchNorm2d(ch), nn.ReLU()]
        for i in range(doublings):
            last = i == doublings - 1
            ch_out = channels if last else _width(64 * 2 ** (doublings - i - 2), width)
            layers.append(nn.ConvTranspose2d(ch, ch_out, kernel_size=4, stride=2, padding=1, bias=last))
            layers += [nn.Tanh()] if last else [nn.BatchNorm2d(ch_out), nn.ReLU()]
            ch = ch_out
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.reshape(z.shape[0], self.z_dim, 1, 1))  # (B, z, 1, 1) -> (B, C, R, R)


class DCGANDiscriminator(nn.Module):
    """Stride-2 4x4 convs doubling the channels down to 4x4, then a 4x4 valid conv to one logit.

    Args:
        resolution: input side in pixels, a power of two >= 8.
        channels: input channels.
        width: multiplier of the channel counts (the paper's ndf = 64 at width 1).

    Input: images (B, channels, resolution, resolution) in [-1, 1]. Output: logits (B,).
    """

    def __init__(self, resolution: int, channels: int, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch_in = channels
        for i in range(_doublings(resolution)):
            ch = _width(64 * 2**i, width)
            layers.append(nn.Conv2d(ch_in, ch, kernel_size=4, stride=2, padding=1, bias=i == 0))
            if i > 0:  # the paper leaves D's input layer without BatchNorm
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.LeakyReLU(0.2))
            ch_in = ch
        layers.append(nn.Conv2d(ch_in, 1, kernel_size=4, stride=1, padding=0))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()  # (B, 1, 1, 1) -> (B,)
