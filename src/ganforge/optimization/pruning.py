"""Structured channel pruning with torch-pruning, then a distillation fine-tune against the trained generator.

torch-pruning traces the generator's dependency graph and removes whole channels from every coupled layer,
so the pruned convolutions really are smaller. The image-producing layer keeps its output channels. The
fine-tune then teaches the pruned student to reproduce the trained teacher's images from the same latents
(an L1 pixel loss), while the trained, frozen discriminator's adversarial loss keeps them sharp.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn
from tqdm import tqdm

from ganforge.errors import UserError
from ganforge.files import read_json
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


def _layers_in_call_order(generator: nn.Module, z: torch.Tensor) -> list[nn.Module]:
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda module, args, out: order.append(module))
             for m in generator.modules() if isinstance(m, _WEIGHTED)]
    try:
        with torch.no_grad():
            generator(z)
    finally:
        for hook in hooks:
            hook.remove()
    return order


def fixed_width_layers(generator: nn.Module, z: torch.Tensor) -> list[nn.Module]:
    """Layers whose output channels must stay: the last one run (it writes the image channels), and every
    linear layer followed by a convolution (its features are reshaped into a feature map, so they are not
    channels one-to-one)."""
    order = _layers_in_call_order(generator, z)
    reshaped = [a for a, b in zip(order, order[1:], strict=False)
                if isinstance(a, nn.Linear) and isinstance(b, nn.Conv2d | nn.ConvTranspose2d)]
    return [order[-1], *reshaped]


def prune_generator(generator: nn.Module, z_dim: int, ratio: float, criterion: str) -> nn.Module:
    """A copy of ``generator`` with ``ratio`` of the channels of every prunable layer group removed."""
    pruned = copy.deepcopy(generator).eval()
    example = torch.zeros(2, z_dim)  # (2, z_dim): only shapes matter for tracing
    pruner = tp.pruner.BasePruner(pruned, example, importance=_importance(criterion), pruning_ratio=ratio,
                                  ignored_layers=fixed_width_layers(pruned, example))
    pruner.step()
    with torch.no_grad():
        if pruned(example).shape != generator.eval()(example).shape:
            raise UserError(f"optimize.prune_ratio: pruning {generator.__class__.__name__} at {ratio} changed its "
                            f"output shape")
    return pruned


def trained_discriminator(train_dir: str | Path, spec: GeneratorSpec) -> nn.Module:
    """The train stage's final discriminator, rebuilt from ``train.json``'s params and the checkpoint."""
    train_dir = Path(train_dir)
    params = read_json(train_dir / "train.json").get("params", {})
    try:
        discriminator = build_discriminator(params["arch"], spec.resolution, spec.channels,
                                            params.get("width", 1.0), params.get("d_spectral_norm", False))
    except KeyError:
        raise UserError(f"{train_dir / 'train.json'}: no 'params.arch' to rebuild the discriminator from") from None
    state = load_checkpoint(train_dir / "checkpoint.pt")
    load_state(discriminator, state["discriminator"], train_dir / "checkpoint.pt")
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
