"""The geometry of a stride-2 transposed convolution (which kernel tap joins which input and output pixels), the
rewriting of a nearest 2x upsampling followed by a 3x3 convolution as one such transposed convolution, and the
lowering of a generator's runs of them (with the activations between them) into one module each, as the
``fused`` and ``direct`` forms compute them."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from ganforge.errors import UserError
from ganforge.measurement.speed import flops_per_image

KERNEL, STRIDE, PADDING = 4, 2, 1

# (transposed conv, the activation module after it or None), in order: one run of layers to lower
Layers = list[tuple[nn.ConvTranspose2d, nn.Module | None]]


def kernel_tap(phase: int, shift: int) -> int | None:
    """Kernel row (or column) through which input row ``i + shift`` reaches output row ``2i + phase`` of a
    stride-2, kernel-4, padding-1 transposed conv, or None when it does not reach it."""
    tap = phase + 1 - STRIDE * shift
    return tap if 0 <= tap < KERNEL else None


def is_stride2_upsampling(module: nn.Module) -> bool:
    """A plain stride-2, kernel-4, padding-1 transposed conv (the upsampling layer of seed and dcgan)."""
    return (isinstance(module, nn.ConvTranspose2d) and module.kernel_size == (KERNEL, KERNEL)
            and module.stride == (STRIDE, STRIDE) and module.padding == (PADDING, PADDING)
            and module.output_padding == (0, 0) and module.dilation == (1, 1) and module.groups == 1)


def in_place_activation(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The in-place form of an elementwise activation, or None when there is none."""
    if isinstance(module, nn.ReLU):
        return torch.relu_
    if isinstance(module, nn.Tanh):
        return torch.tanh_
    if isinstance(module, nn.Sigmoid):
        return torch.sigmoid_
    if isinstance(module, nn.LeakyReLU):
        slope = module.negative_slope
        return lambda x: F.leaky_relu_(x, slope)
    return None


def no_stride2_upsampling(form: str, generator: nn.Module) -> UserError:
    """The one-line error of a form asked of a generator with nothing to lower."""
    return UserError(f"{form}: {type(generator).__name__} has no stride-2 transposed convolutions "
                     f"(kernel {KERNEL}, padding {PADDING}) and no nearest 2x upsampling followed by a 3x3 "
                     f"convolution to lower")


def _is_nearest_doubling(module: nn.Module) -> bool:
    return (isinstance(module, nn.Upsample) and module.mode == "nearest" and module.size is None
            and module.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0)))


def _is_same_3x3(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3) and module.stride == (1, 1)
            and module.padding == (1, 1) and module.dilation == (1, 1) and module.groups == 1
            and module.padding_mode == "zeros")


def upsampled_conv_as_transposed(conv: nn.Conv2d) -> nn.ConvTranspose2d:
    """The stride-2 transposed conv equal to a nearest 2x upsampling followed by ``conv`` (3x3, padding 1).

    Output row ``2i + a`` of the pair reads upsampled rows ``2i + a + d - 1`` (kernel row ``d`` of 3), that is
    input row ``i + (a + d - 1) // 2``; the transposed conv reaches it through :func:`kernel_tap`, so each of its
    four taps is the sum of the 3x3 rows that land there (and likewise for columns). Four taps per output pixel
    instead of nine: the same values up to float rounding, in 4/9 of the multiply-adds.
    """
    assert _is_same_3x3(conv), conv
    rows = torch.zeros(KERNEL, 3, dtype=conv.weight.dtype)  # rows[t, d]: 3x3 row d feeds transposed tap t
    for phase in range(STRIDE):
        for d in range(3):
            rows[kernel_tap(phase, (phase + d - 1) // 2), d] = 1.0
    weight = torch.einsum("yd,xe,oide->ioyx", rows, rows, conv.weight.detach())  # (C_in, C_out, 4, 4)
    convt = skip_init(nn.ConvTranspose2d, conv.in_channels, conv.out_channels, KERNEL, STRIDE, PADDING,
                      bias=conv.bias is not None)  # no random init: the global RNG stays as it was
    with torch.no_grad():
        convt.weight.copy_(weight)
        if conv.bias is not None:
            convt.bias.copy_(conv.bias.detach())
    return convt


def essential_flops_per_image(generator: nn.Module, z_dim: int) -> int:
    """FLOPs of one image from ``generator`` in its cheapest exact form: every nearest 2x upsampling + 3x3 conv
    counted as the four-tap transposed conv it equals (:func:`rewrite_upsampled_convs`). Every form's GFLOP/s and
    share of the GEMM ceiling are measured against this count, so a form that skips work gets no credit for it."""
    return flops_per_image(rewrite_upsampled_convs(copy.deepcopy(generator)), z_dim)


def rewrite_upsampled_convs(generator: nn.Module) -> nn.Module:
    """Replace, in place, every nearest 2x upsampling followed by a 3x3 convolution inside an ``nn.Sequential``
    (``lite``'s upsampling) by the equal stride-2 transposed conv (:func:`upsampled_conv_as_transposed`) and an
    ``nn.Identity``. Returns ``generator``."""
    for parent in list(generator.modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        for index in range(len(parent) - 1):
            if _is_nearest_doubling(parent[index]) and _is_same_3x3(parent[index + 1]):
                parent[index], parent[index + 1] = nn.Identity(), upsampled_conv_as_transposed(parent[index + 1])
    return generator


def lower_upsampling_runs(generator: nn.Module, form: str, lower: Callable[[Layers], nn.Module]) -> nn.Module:
    """Replace, in place, every run of stride-2 transposed convs inside an ``nn.Sequential`` of ``generator``
    (BatchNorm already folded), with the activations between them, by ``lower(run)``; the rest is left as it
    is. Returns ``generator``. Raises :class:`UserError`, naming ``form``, when there is nothing to lower or a
    conv lies outside a Sequential."""
    total = sum(is_stride2_upsampling(module) for module in generator.modules())
    if not total:
        raise no_stride2_upsampling(form, generator)
    lowered = 0
    for parent in list(generator.modules()):
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent)
        index = 0
        while index < len(children):
            if not is_stride2_upsampling(children[index]):
                index += 1
                continue
            start, layers = index, []
            while index < len(children) and is_stride2_upsampling(children[index]):
                convt, index = children[index], index + 1
                while index < len(children) and isinstance(children[index], nn.Identity):
                    index += 1  # a folded BatchNorm
                activation = None
                if index < len(children) and in_place_activation(children[index]) is not None:
                    activation, index = children[index], index + 1
                layers.append((convt, activation))
            parent[start] = lower(layers)
            for position in range(start + 1, index):
                parent[position] = nn.Identity()
            lowered += len(layers)
    if lowered < total:
        raise UserError(f"{form}: {type(generator).__name__} has stride-2 transposed convolutions outside an "
                        f"nn.Sequential, which this form cannot lower")
    return generator
