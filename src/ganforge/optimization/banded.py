"""The ``banded`` form: stride-2 transposed convolutions lowered to matrix multiplies over image rows.

A pruned generator's transposed convolutions have a handful of channels on maps of a few pixels. Convolution
kernels spend their time on per-image and per-call overhead there, not arithmetic: ONNX Runtime loops over the
batch one image at a time, and oneDNN's kernels are built for wide channels. Here each layer is instead a few
matrix multiplies over the rows of the whole batch at once.

For ``ConvTranspose2d(kernel_size=4, stride=2, padding=1)`` on an input of width ``W``, a row of the input is a
vector of ``W * C_in`` features (pixels, then channels), and output row ``2i + a`` (phase ``a``) is::

    input row (i - 1 + a) @ M[a, 0]  +  input row (i + a) @ M[a, 1]

where ``M[a, t]`` is a ``(W * C_in, 2W * C_out)`` banded matrix holding kernel row ``3 - a - 2t``: input column
``j`` feeds output column ``q`` through kernel column ``q + 1 - 2j`` when that lies in 0..3. The result equals
the transposed convolution up to float rounding, computed with more multiply-adds (the band is mostly zeros)
but in a few large calls.

The batch's rows are stacked in one matrix with zero rows between images, so each product above is a single
matrix multiply over the whole batch on a shifted view of that matrix, written straight into the next layer's
matrix. Rows that straddle two images come out as garbage and are zeroed, becoming the next layer's padding.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ganforge.optimization.lowering import (
    KERNEL,
    Layers,
    in_place_activation,
    is_stride2_upsampling,
    lower_upsampling_runs,
)


def band_matrices(convt: nn.ConvTranspose2d, width: int) -> torch.Tensor:
    """The matrices ``M[a, t]`` of ``convt`` on inputs ``width`` pixels wide: (2, 2, width*C_in, 2*width*C_out).

    Rows are indexed by (input column j, input channel), columns by (output column q, output channel).
    """
    weight = convt.weight.detach()  # (C_in, C_out, 4, 4)
    c_in, c_out = weight.shape[:2]
    bands = torch.zeros(2, 2, width, c_in, 2 * width, c_out, dtype=weight.dtype)
    for a in range(2):
        for t in range(2):
            ky = 3 - a - 2 * t
            for j in range(width):
                for kx in range(KERNEL):
                    q = 2 * j + kx - 1
                    if 0 <= q < 2 * width:
                        bands[a, t, j, :, q, :] = weight[:, :, ky, kx]
    return bands.reshape(2, 2, width * c_in, 2 * width * c_out)


class BandedUpsampling(nn.Module):
    """A chain of stride-2 transposed convs, each followed by an optional elementwise activation, computed as
    banded matrix multiplies over image rows (see the module docstring).

    Args:
        layers: (transposed conv, activation module or None) pairs, in order; BatchNorm already folded.
        width: input width in pixels of the first conv (each conv doubles it).

    Input (B, C_in, H, width); output (B, C_out, H * 2^n, width * 2^n) for n layers, contiguous.
    """

    def __init__(self, layers: Layers, width: int) -> None:
        super().__init__()
        self.width = width
        self.out_channels: list[int] = []
        self.activations: list[Callable[[torch.Tensor], torch.Tensor] | None] = []
        for index, (convt, activation) in enumerate(layers):
            assert is_stride2_upsampling(convt), convt
            bands = band_matrices(convt, width << index)
            # Stacked row r + 1 feeds both phases (M[0, 1] and M[1, 0]): one product for both, into adjacent
            # columns; rows r and r + 2 feed one phase each.
            self.register_buffer(f"above{index}", bands[0, 0].contiguous())
            self.register_buffer(f"center{index}", torch.cat([bands[0, 1], bands[1, 0]], dim=1))
            self.register_buffer(f"below{index}", bands[1, 1].contiguous())
            bias = convt.bias.detach() if convt.bias is not None else convt.weight.new_zeros(convt.out_channels)
            self.register_buffer(f"bias{index}", bias.repeat(4 * (width << index)))  # per (phase, q, channel)
            self.out_channels.append(convt.out_channels)
            self.activations.append(None if activation is None else in_place_activation(activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        if width != self.width:
            raise ValueError(f"banded layers were built for inputs {self.width} pixels wide, got {width}")
        stride = height + 1  # rows per image in the stacked matrix: one zero row, then the image
        rows = x.new_zeros(batch * stride + 2, width * channels)  # two zero rows close the last image
        rows[:batch * stride].view(batch, stride, width, channels)[:, 1:] = x.permute(0, 2, 3, 1)
        for index, (c_out, activation) in enumerate(zip(self.out_channels, self.activations, strict=True)):
            positions, features = batch * stride, 2 * width * c_out
            following = x.new_empty(2 * positions + 2, features)
            following[0].zero_()
            following[-1].zero_()
            out = following[1:1 + 2 * positions].view(positions, 2 * features)  # position r -> rows 2r, 2r + 1
            # output rows 2i and 2i + 1 of an image from its rows i - 1, i, i + 1 (stacked rows r, r + 1, r + 2)
            torch.addmm(getattr(self, f"bias{index}"), rows[1:1 + positions], getattr(self, f"center{index}"),
                        out=out)
            out[:, :features].addmm_(rows[:positions], getattr(self, f"above{index}"))
            out[:, features:].addmm_(rows[2:2 + positions], getattr(self, f"below{index}"))
            if activation is not None:
                activation(out)
            out.view(batch, stride, 2 * features)[:, height:].zero_()  # rows that straddle two images
            rows, stride, height, width, channels = following, 2 * stride, 2 * height, 2 * width, c_out
        images = rows[1:1 + batch * stride].view(batch, stride, width, channels)[:, :height]
        return images.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


def _input_widths(generator: nn.Module, z_dim: int) -> dict[nn.Module, int]:
    """Input width of every bandable transposed conv, from one forward pass on a zero latent."""
    widths: dict[nn.Module, int] = {}

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        widths.setdefault(module, args[0].shape[-1])

    hooks = [module.register_forward_pre_hook(record) for module in generator.modules()
             if is_stride2_upsampling(module)]
    try:
        with torch.no_grad():
            generator(torch.zeros(1, z_dim))
    finally:
        for hook in hooks:
            hook.remove()
    return widths


def band(generator: nn.Module, z_dim: int) -> nn.Module:
    """A copy of ``generator`` (BatchNorm already folded) whose runs of stride-2 transposed convs, with the
    activations between them, are one :class:`BandedUpsampling` each. The rest is left as it is.

    Raises :class:`UserError` when the generator has no such convolution to lower.
    """
    banded = copy.deepcopy(generator).eval()
    widths = _input_widths(banded, z_dim)
    return lower_upsampling_runs(banded, "banded", lambda layers: BandedUpsampling(layers, widths[layers[0][0]]))
