"""The geometry of a stride-2 transposed convolution (which kernel tap joins which input and output pixels) and
the lowering of a generator's runs of them (with the activations between them) into one module each, as the
``fused`` and ``direct`` forms compute them."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ganforge.errors import UserError

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
                     f"(kernel {KERNEL}, padding {PADDING}) to lower")


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
