"""Structured channel pruning with torch-pruning, then a distillation fine-tune against the trained generator.

torch-pruning traces the generator's dependency graph and removes whole channels from every coupled layer,
so the pruned convolutions really are smaller. The image-producing layer keeps its output channels. The
fine-tune then teaches the pruned student to reproduce the trained teacher's images from the same latents
(an L1 pixel loss), while the trained, frozen discriminator's adversarial loss keeps them sharp.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from tqdm import tqdm

from ganforge.contracts import CHECKPOINT
from ganforge.errors import UserError
from ganforge.files import check_json, read_json, shown
from ganforge.models import GeneratorSpec, build_discriminator
from ganforge.models.registry import load_state
from ganforge.training.checkpoint import load_checkpoint
from ganforge.training.losses import generator_loss

IMPORTANCE_CRITERIA = ("l1", "bn-scale")
_WEIGHTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


def _importance(criterion: str) -> tp.importance.Importance:
    if criterion == "l1":
        return tp.importance.MagnitudeImportance(p=1)  # L1 norm of each channel's weights
    if criterion == "bn-scale":
        return tp.importance.BNScaleImportance()  # |gamma| of the BatchNorm after each channel
    raise UserError(f"optimize.prune_importance: unknown criterion {criterion!r} "
                    f"(known: {', '.join(IMPORTANCE_CRITERIA)})")


def _trace(generator: nn.Module, z: torch.Tensor) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(leaf module, its input, its output) for every leaf call of one forward pass, in call order. Every
    tensor stays alive until the trace is dropped, so equal data pointers mean one storage."""
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
    leaves = [m for m in generator.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(lambda module, args, out: calls.append((module, args[0], out))) for m in leaves]
    try:
        with torch.no_grad():
            generator(z)
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def _layers_in_call_order(generator: nn.Module, z: torch.Tensor) -> list[nn.Module]:
    return [module for module, _, _ in _trace(generator, z) if isinstance(module, _WEIGHTED)]


def fixed_width_layers(generator: nn.Module, z: torch.Tensor) -> list[nn.Module]:
    """Layers whose output channels must stay: the last one run (it writes the image channels), and every
    linear layer followed by a convolution (its features are reshaped into a feature map, so they are not
    channels one-to-one)."""
    order = _layers_in_call_order(generator, z)
    reshaped = [a for a, b in zip(order, order[1:], strict=False)
                if isinstance(a, nn.Linear) and isinstance(b, nn.Conv2d | nn.ConvTranspose2d)]
    return [order[-1], *reshaped]


@dataclass(frozen=True)
class _ReshapedMap:
    """A linear layer whose features (through per-feature norms and activations) are reshaped into the
    channels of a feature map that exactly one convolution reads."""

    linear: nn.Linear
    norms: list[nn.BatchNorm1d]
    conv: nn.Conv2d | nn.ConvTranspose2d


def _reshaped_maps(generator: nn.Module, z: torch.Tensor) -> list[_ReshapedMap]:
    calls = _trace(generator, z)
    found = []
    for i, (linear, _, features) in enumerate(calls):
        if not isinstance(linear, nn.Linear):
            continue
        norms, pointer = [], features.data_ptr()
        for module, source, out in calls[i + 1:]:  # follow the features through per-feature 2-D ops
            if source.data_ptr() == pointer and source.dim() == out.dim() == 2 and not isinstance(module, _WEIGHTED):
                norms += [module] if isinstance(module, nn.BatchNorm1d) else []
                pointer = out.data_ptr()
        readers = [module for module, source, _ in calls if source.data_ptr() == pointer and source.dim() == 4]
        if len(readers) == 1 and isinstance(readers[0], nn.Conv2d | nn.ConvTranspose2d):
            found.append(_ReshapedMap(linear, norms, readers[0]))
    return found


def _prune_reshaped_map(found: _ReshapedMap, ratio: float, criterion: str) -> None:
    """Remove ``ratio`` of the map's channels: each one's block of linear features (and their norm
    entries) and the convolution's input channel, with torch-pruning's layer pruning functions."""
    conv, linear = found.conv, found.linear
    per_channel = linear.out_features // conv.in_channels  # map pixels: features per channel
    if criterion == "bn-scale" and found.norms:
        scores = found.norms[0].weight.detach().abs().reshape(conv.in_channels, per_channel).sum(1)
    else:
        conv_in = conv.weight.detach().transpose(0, 1) if isinstance(conv, nn.Conv2d) else conv.weight.detach()
        scores = (linear.weight.detach().abs().reshape(conv.in_channels, -1).sum(1)
                  + conv_in.abs().reshape(conv.in_channels, -1).sum(1))
    channels = scores.argsort()[:int(conv.in_channels * ratio)].sort().values.tolist()
    features = [c * per_channel + j for c in channels for j in range(per_channel)]
    tp.prune_linear_out_channels(linear, features)
    for norm in found.norms:
        tp.prune_batchnorm_out_channels(norm, features)
    tp.prune_conv_in_channels(conv, channels)


def prune_generator(generator: nn.Module, z_dim: int, ratio: float, criterion: str) -> nn.Module:
    """A copy of ``generator`` with ``ratio`` of the channels of every prunable layer group removed."""
    pruned = copy.deepcopy(generator).eval()
    example = torch.zeros(2, z_dim)  # (2, z_dim): only shapes matter for tracing
    maps = _reshaped_maps(pruned, example)
    pruner = tp.pruner.BasePruner(pruned, example, importance=_importance(criterion), pruning_ratio=ratio,
                                  ignored_layers=fixed_width_layers(pruned, example))
    pruner.step()
    for found in maps:  # torch-pruning's graph does not couple features with the channels they become
        _prune_reshaped_map(found, ratio, criterion)
    with torch.no_grad():
        if pruned(example).shape != generator.eval()(example).shape:
            raise UserError(f"optimize.prune_ratio: pruning {generator.__class__.__name__} at {ratio} changed its "
                            f"output shape")
    return pruned


def trained_discriminator(train_dir: str | Path, spec: GeneratorSpec) -> nn.Module:
    """The train stage's final discriminator, rebuilt from ``train.json``'s params and the checkpoint."""
    train_dir = Path(train_dir)
    record = train_dir / "train.json"
    params = read_json(record)
    check_json(params, {"params": {"arch": str, "width?": float, "d_spectral_norm?": bool, "d_batchnorm?": bool}},
               str(record))
    params = params["params"]
    # D's family and width are G's: anything else is a train.json from another run (or edited), and a width
    # the trained G does not have could size D without bound.
    recorded = {"arch": params["arch"], "width": params.get("width", 1.0)}
    for key, expected in (("arch", spec.arch), ("width", spec.width)):
        if recorded[key] != expected:
            raise UserError(f"{record}: params.{key}: {shown(recorded[key])} but the trained generator's is "
                            f"{expected!r}")
    discriminator = build_discriminator(spec.arch, spec.resolution, spec.channels, spec.width,
                                        params.get("d_spectral_norm", False), params.get("d_batchnorm", True))
    state = load_checkpoint(train_dir / CHECKPOINT, required=("discriminator",))
    load_state(discriminator, state["discriminator"], train_dir / CHECKPOINT)
    return discriminator.eval().requires_grad_(False)


def _train_keeping_batchnorm_statistics(module: nn.Module) -> None:
    """Training mode, except BatchNorm keeps normalising with its running statistics (its affine weights
    still learn), so the fine-tuned student computes exactly what it will compute in eval mode."""
    module.train()
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eval()


def distill(student: nn.Module, teacher: nn.Module, discriminator: nn.Module, z_dim: int, settings: Any,
            seed: int) -> dict[str, float]:
    """Fine-tune ``student`` in place to match ``teacher`` on shared latents: L1 on pixels plus
    ``settings.adversarial_weight`` times the frozen ``discriminator``'s non-saturating G loss.

    ``settings`` carries ``finetune_kimg``, ``finetune_lr``, ``finetune_batch`` and ``adversarial_weight``
    (the optimize params). Returns the L1 distance to the teacher before and after, on held-out latents.
    """
    teacher = teacher.eval()
    held_out = torch.randn(256, z_dim, generator=torch.Generator().manual_seed(seed + 1))  # (256, z_dim)

    @torch.no_grad()
    def distance() -> float:
        student.eval()
        return float(F.l1_loss(student(held_out), teacher(held_out)))

    before = distance()
    latents = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(student.parameters(), lr=settings.finetune_lr, betas=(0.5, 0.999))
    steps = math.ceil(settings.finetune_kimg * 1000 / settings.finetune_batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, steps))
    _train_keeping_batchnorm_statistics(student)
    for _ in tqdm(range(steps), desc="optimize: distilling the pruned generator", unit="step", mininterval=1.0):
        z = torch.randn(settings.finetune_batch, z_dim, generator=latents)  # (batch, z_dim)
        with torch.no_grad():
            target = teacher(z)  # (batch, C, R, R)
        fake = student(z)
        loss = F.l1_loss(fake, target)
        if settings.adversarial_weight > 0:
            loss = loss + settings.adversarial_weight * generator_loss("nonsaturating", discriminator(fake).float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    student.eval()
    return {"teacher_l1_before": before, "teacher_l1_after": distance()}
