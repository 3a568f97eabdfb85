"""The ``overlap`` form: each stride-2 transposed convolution as one matrix multiply over all kernel taps, then an
overlap-add, with the batch as the innermost dimension.

A transposed convolution scatters every input pixel through the 16 taps of its 4x4 kernel. Written that way it is
one matrix multiply with exactly the layer's multiply-adds (no zeros, unlike the sub-pixel and banded forms)::

    Y[(ky, kx, c_out), (i, j, b)] = W[(ky, kx, c_out), c_in] @ X[c_in, (i, j, b)]

followed by an overlap-add: output pixel ``(2i + a, 2j + a')`` sums four of those tap planes, shifted by at most
one pixel. With stride 2, kernel 4 and padding 1, output row ``2i + a`` takes input row ``i + d`` through kernel
row ``a + 1 - 2d`` for the two ``d`` in -1..1 that give a row in 0..3 (the same for columns).

Activations are stored ``(C, H, W, B)``: channel-major, batch innermost. The multiply is then one call with a
long output (every pixel of the whole batch), and every shifted plane of the overlap-add is a run of contiguous
batch vectors, so the adds vectorise whatever the channel count. Eagerly each layer is one multiply, one add
that writes every output pixel with its centre tap and bias, and eight in-place adds for the shifted taps; under
``torch.compile`` it is written as a pure function that inductor fuses into one loop per layer, which writes
every output pixel once.

The result equals the transposed convolution up to float rounding. It pays off for wide layers (the unpruned
``seed`` and ``dcgan`` generators), where convolution kernels lose time to the sub-pixel form's extra work or to
transposed-convolution overhead; a pruned generator's few-channel layers are faster in the ``banded`` form.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ganforge.optimization.lowering import KERNEL, Layers, in_place_activation, lower_upsampling_runs

_SHIFTS = (0, -1, 1)  # input offset d of a term; the centre (0) first: it writes every output pixel


def kernel_tap(phase: int, shift: int) -> int | None:
    """Kernel row (or column) through which input row ``i + shift`` reaches output row ``2i + phase``, or None
    when it does not reach it."""
    tap = phase + 1 - 2 * shift
    return tap if 0 <= tap < KERNEL else None


def _phases_and_taps(shift: int) -> tuple[slice, slice]:
    """The output phases an input offset reaches and the kernel taps that carry it, in matching order, as
    slices: offset 0 reaches both phases (taps 1, 2), -1 phase 0 (tap 3), +1 phase 1 (tap 0)."""
    phases = [phase for phase in (0, 1) if kernel_tap(phase, shift) is not None]
    taps = [kernel_tap(phase, shift) for phase in phases]
    return slice(phases[0], phases[-1] + 1), slice(taps[0], taps[-1] + 1)


_PHASES_AND_TAPS = {shift: _phases_and_taps(shift) for shift in _SHIFTS}  # fixed by the kernel: built once


def _rows(shift: int, size: int) -> tuple[slice, slice]:
    """(output rows, input rows) that an input offset pairs within a side of ``size`` pixels."""
    return slice(max(0, -shift), size - max(0, shift)), slice(max(0, shift), size - max(0, -shift))


class OverlapAddUpsampling(nn.Module):
    """A chain of stride-2 transposed convs, each followed by an optional elementwise activation, computed as tap
    matrix multiplies and overlap-adds in a batch-innermost layout (see the module docstring).

    Args:
        layers: (transposed conv, activation module or None) pairs, in order; BatchNorm already folded.

    Input (B, C_in, H, W); output (B, C_out, H * 2^n, W * 2^n) for n layers, contiguous.
    """

    def __init__(self, layers: Layers) -> None:
        super().__init__()
        self.out_channels: list[int] = []
        self.activations: list[Callable[[torch.Tensor], torch.Tensor] | None] = []
        for index, (convt, activation) in enumerate(layers):
            weight = convt.weight.detach()  # (C_in, C_out, ky, kx)
            c_in, c_out = weight.shape[:2]
            # rows (ky, kx, c_out), columns c_in
            self.register_buffer(f"taps{index}", weight.permute(2, 3, 1, 0).reshape(-1, c_in).contiguous())
            bias = convt.bias.detach() if convt.bias is not None else weight.new_zeros(c_out)
            self.register_buffer(f"bias{index}", bias.clone())
            self.out_channels.append(c_out)
            self.activations.append(None if activation is None else in_place_activation(activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.permute(1, 2, 3, 0).contiguous()  # (C, H, W, B)
        overlap_add = _overlap_add_traced if torch.compiler.is_compiling() else _overlap_add_in_place
        for index, (c_out, activation) in enumerate(zip(self.out_channels, self.activations, strict=True)):
            channels, height, width, batch = h.shape
            taps = torch.mm(getattr(self, f"taps{index}"), h.view(channels, -1))
            h = overlap_add(taps.view(KERNEL, KERNEL, c_out, height, width, batch), getattr(self, f"bias{index}"))
            if activation is not None:
                activation(h)
        return h.permute(3, 0, 1, 2).contiguous()  # (B, C, H, W)


def _overlap_add_in_place(taps: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Tap planes (ky, kx, C, H, W, B) -> the transposed conv's output (C, 2H, 2W, B), in nine eager calls: the
    centre offset writes every output pixel (with the bias), each other offset adds into the phases it reaches."""
    _, _, channels, height, width, batch = taps.shape
    out = taps.new_empty(channels, 2 * height, 2 * width, batch)
    phased = out.view(channels, height, 2, width, 2, batch)  # (C, i, a, j, a', B): pixel (2i + a, 2j + a')
    for dy in _SHIFTS:
        row_phases, row_taps = _PHASES_AND_TAPS[dy]
        out_rows, in_rows = _rows(dy, height)
        for dx in _SHIFTS:
            col_phases, col_taps = _PHASES_AND_TAPS[dx]
            out_cols, in_cols = _rows(dx, width)
            # (ky, kx, C, i, j, B) -> (C, i, ky, j, kx, B), matching the phases
            source = taps[row_taps, col_taps, :, in_rows, in_cols].permute(2, 3, 0, 4, 1, 5)
            target = phased[:, out_rows, row_phases, out_cols, col_phases]
            if dy == 0 and dx == 0:
                torch.add(source, bias.view(-1, 1, 1, 1, 1, 1), out=target)
            else:
                target.add_(source)
    return out


def _overlap_add_traced(taps: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same as :func:`_overlap_add_in_place` as a pure function (no writes into views), which
    ``torch.compile`` can trace and fuse: each output phase sums its four shifted tap planes of a zero-padded
    copy, and is zero-padded into its place among the four phases; the sum of those is the output.

    Placing the phases by padding rather than stacking them lets inductor write every output pixel once, in one
    loop per layer (a stack writes each phase, then copies them); the padding's zeros are branches, not loads.
    """
    _, _, channels, height, width, batch = taps.shape
    padded = F.pad(taps, (0, 0, 1, 1, 1, 1))  # one zero pixel around each plane
    out = bias.view(-1, 1, 1, 1, 1, 1)  # broadcasts to (C, i, a, j, a', B): pixel (2i + a, 2j + a')
    for row_phase in (0, 1):
        for col_phase in (0, 1):
            phase = None
            for dy in _SHIFTS:
                for dx in _SHIFTS:
                    ky, kx = kernel_tap(row_phase, dy), kernel_tap(col_phase, dx)
                    if ky is not None and kx is not None:
                        term = padded[ky, kx, :, 1 + dy:1 + dy + height, 1 + dx:1 + dx + width]  # (C, H, W, B)
                        phase = term if phase is None else phase + term
            placed = F.pad(phase.view(channels, height, 1, width, 1, batch),
                           (0, 0, col_phase, 1 - col_phase, 0, 0, row_phase, 1 - row_phase))
            out = out + placed
    return out.reshape(channels, 2 * height, 2 * width, batch)


def overlap(generator: nn.Module) -> nn.Module:
    """A copy of ``generator`` (BatchNorm already folded) whose runs of stride-2 transposed convs, with the
    activations between them, are one :class:`OverlapAddUpsampling` each. The rest is left as it is.

    Raises :class:`UserError` when the generator has no such convolution to lower.
    """
    return lower_upsampling_runs(copy.deepcopy(generator).eval(), "overlap", OverlapAddUpsampling)
