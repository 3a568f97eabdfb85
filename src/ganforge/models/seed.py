"""The seed article's GAN, made to work.

The article's generator maps z through fully connected layers 256 -> 512 -> 1024 and then transposed
convolutions. Its code forgot the reshape between the two; here the 1024 features are reshaped to a
(64, 4, 4) map, and each transposed conv doubles the side until the target resolution.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_FC_WIDTHS = (256, 512, 1024)
_START_SIDE = 4
_START_CHANNELS = _FC_WIDTHS[-1] // (_START_SIDE * _START_SIDE)  # 64
_MIN_CHANNELS = 16


def _num_doublings(resolution: int) -> int:
    doublings = int(math.log2(resolution // _START_SIDE))
    assert _START_SIDE * 2**doublings == resolution, f"resolution must be 4 * 2^k, got {resolution}"
    return doublings


class SeedGenerator(nn.Module):
    """fc 256 -> 512 -> 1024, reshape to (64, 4, 4), then stride-2 transposed convs up to the resolution.

    Args:
        z_dim: latent size.
        resolution: output side in pixels, a power of two >= 8.
        channels: output channels (1 or 3).

    Input: z of shape (B, z_dim). Output: images of shape (B, channels, resolution, resolution) in [-1, 1].
    """

    def __init__(self, z_dim: int, resolution: int, channels: int) -> None:
        super().__init__()
        self.z_dim, self.resolution, self.channels = z_dim, resolution, channels
        widths = (z_dim, *_FC_WIDTHS)
        fc: list[nn.Module] = []
        for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            fc.append(nn.Linear(w_in, w_out, bias=i == 0))
            if i > 0:
                fc.append(nn.BatchNorm1d(w_out))
            fc.append(nn.ReLU())
        self.fc = nn.Sequential(*fc)

        ups: list[nn.Module] = []
        ch = _START_CHANNELS
        doublings = _num_doublings(resolution)
        for i in range(doublings):
            last = i == doublings - 1
            ch_out = channels if last else max(_MIN_CHANNELS, ch // 2)
            ups.append(nn.ConvTranspose2d(ch, ch_out, kernel_size=4, stride=2, padding=1, bias=last))
            if last:
                ups.append(nn.Tanh())
            else:
                ups += [nn.BatchNorm2d(ch_out), nn.ReLU()]
            ch = ch_out
        self.ups = nn.Sequential(*ups)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z)  # (B, 1024)
        # (B, 64, 4, 4): the article's missing reshape (channels inferred, so a pruned copy has fewer)
        h = h.unflatten(1, (-1, _START_SIDE, _START_SIDE))
        return self.ups(h)  # (B, C, R, R)


class SeedDiscriminator(nn.Module):
    """Mirror of the generator: stride-2 convs down to 4x4, then a linear logit.

    Args:
        resolution: input side in pixels, a power of two >= 8.
        channels: input channels.

    Input: images (B, channels, resolution, resolution) in [-1, 1]. Output: logits (B,).
    """

    def __init__(self, resolution: int, channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch_in, ch = channels, 32
        for i in range(_num_doublings(resolution)):
            layers.append(nn.Conv2d(ch_in, ch, kernel_size=4, stride=2, padding=1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(ch))
            layers.append(nn.LeakyReLU(0.2))
            ch_in, ch = ch, min(ch * 2, 256)
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(ch_in * _START_SIDE * _START_SIDE, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, C', 4, 4)
        return self.head(h.flatten(1)).squeeze(1)  # (B,)
