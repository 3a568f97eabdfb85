"""Generator variants. Each is a deterministic transform of the float weights described by a :class:`Recipe`,
so a variant is stored as float weights plus a JSON recipe and rebuilt identically wherever it is loaded."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.ao.quantization import fuse_modules, get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from ganforge.errors import UserError

VARIANTS = ("fp32", "fused", "int8")
_FOLDABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class Recipe:
    """How to turn float generator weights into a deployable variant.

    Args:
        variant: one of ``fp32``, ``fused``, ``int8``.
        calibration_seed: seed of the latents fed to int8 observers.
        calibration_batches: number of calibration batches.
        calibration_batch_size: latents per calibration batch.
        quantization_backend: torch.ao backend of the int8 flow.
    """

    variant: str
    calibration_seed: int = 0
    calibration_batches: int = 8
    calibration_batch_size: int = 64
    quantization_backend: str = "fbgemm"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "recipe") -> Recipe:
        if not isinstance(d, dict) or d.get("variant") not in VARIANTS:
            variant = d.get("variant") if isinstance(d, dict) else d
            raise UserError(f"{source}: unknown or missing variant {variant!r} (known: {', '.join(VARIANTS)})")
        recipe = cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})
        if recipe.quantization_backend not in torch.backends.quantized.supported_engines:
            raise UserError(f"{source}: quantization_backend {recipe.quantization_backend!r} is not available "
                            f"(available: {', '.join(torch.backends.quantized.supported_engines)})")
        return recipe


def batchnorm_fold_pairs(module: nn.Module) -> list[list[str]]:
    """Names of (conv|linear, batchnorm) neighbours inside Sequentials, the pairs BN folding can merge."""
    pairs = []
    for name, child in module.named_modules():
        if not isinstance(child, nn.Sequential):
            continue
        kids = list(child.named_children())
        for (n1, m1), (n2, m2) in zip(kids, kids[1:], strict=False):
            if isinstance(m1, _FOLDABLE) and isinstance(m2, _BATCHNORMS):
                prefix = f"{name}." if name else ""
                pairs.append([prefix + n1, prefix + n2])
    return pairs


def fold_batchnorm(generator: nn.Module) -> nn.Module:
    """A copy of ``generator`` with every foldable BatchNorm merged into the preceding layer (eval mode)."""
    folded = copy.deepcopy(generator).eval()
    pairs = batchnorm_fold_pairs(folded)
    # torch.ao's fuser folds BN statistics into conv/linear weights and leaves Identity in the BN's place.
    return fuse_modules(folded, pairs) if pairs else folded


def quantize_int8(generator: nn.Module, z_dim: int, recipe: Recipe) -> nn.Module:
    """Post-training static int8 quantization with torch.ao's FX flow, calibrated on seeded latents.

    The FX flow (rather than PT2E) is used because it quantizes ConvTranspose2d on CPU backends.
    """
    torch.backends.quantized.engine = recipe.quantization_backend
    folded = fold_batchnorm(generator)
    calibration = torch.Generator().manual_seed(recipe.calibration_seed)
    example = (torch.randn(2, z_dim, generator=calibration),)
    # torch.ao announces its own deprecation in favour of torchao on every call; the flow still works and
    # is the one that handles ConvTranspose2d, so keep the pipeline's output readable.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"torch\.ao\..*")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*(quant_min|quantize_per_tensor|reduce_range).*")
        prepared = prepare_fx(folded, get_default_qconfig_mapping(recipe.quantization_backend), example)
        with torch.no_grad():
            for _ in range(recipe.calibration_batches):
                prepared(torch.randn(recipe.calibration_batch_size, z_dim, generator=calibration))
        return convert_fx(prepared).eval()


def build_variant(recipe: Recipe, generator: nn.Module, z_dim: int) -> nn.Module:
    """Apply ``recipe`` to a float generator; the input module is left untouched."""
    if recipe.variant == "fp32":
        return copy.deepcopy(generator).eval()
    if recipe.variant == "fused":
        return fold_batchnorm(generator).to(memory_format=torch.channels_last)
    if recipe.variant == "int8":
        return quantize_int8(generator, z_dim, recipe)
    raise AssertionError(f"unknown variant {recipe.variant!r}")


def float_layers(module: nn.Module) -> list[str]:
    """Leaf modules of a quantized model that still compute in float (reported, never hidden)."""
    names = []
    for name, child in module.named_modules():
        if list(child.children()) or isinstance(child, nn.Identity) or not name:
            continue
        if "quantized" not in type(child).__module__:
            names.append(f"{name} ({type(child).__name__})")
    return names
