"""GAN losses on raw discriminator logits, and the R1 and R2 gradient penalties."""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAIRED_LOSSES = ("rpgan",)  # losses whose G step needs D's logits on the real batch too


def discriminator_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's loss for ``kind`` in ``nonsaturating`` | ``hinge`` | ``rpgan``. Logits (B,) -> scalar.

    nonsaturating: -log D(x) - log(1 - D(G(z))), the original GAN loss.
    hinge: relu(1 - D(x)) + relu(1 + D(G(z))) (Lim & Ye, 2017; used by SNGAN, BigGAN).
    rpgan: the relativistic pairing loss, softplus(D(G(z_i)) - D(x_i)) over pairs of a real and a fake
        (Jolicoeur-Martineau, 2018; with R1 and R2 the loss of R3GAN, Huang et al., 2024).
    """
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    if kind == "rpgan":
        return F.softplus(fake_logits - real_logits).mean()
    assert kind == "nonsaturating", kind
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(kind: str, fake_logits: torch.Tensor, real_logits: torch.Tensor | None = None) -> torch.Tensor:
    """G's loss for ``kind``: -log D(G(z)) (nonsaturating), -D(G(z)) (hinge) or softplus(D(x_i) - D(G(z_i)))
    (rpgan, which needs ``real_logits`` of the paired reals). Logits (B,) -> scalar."""
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "rpgan":
        assert real_logits is not None, "rpgan pairs each fake with a real"
        return F.softplus(real_logits - fake_logits).mean()
    assert kind == "nonsaturating", kind
    return F.softplus(-fake_logits).mean()


def gradient_penalty(logits: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||d D(x) / d x||^2: R1 on real images, R2 on generated ones (Mescheder et al.,
    2018). -> scalar.

    ``images`` (B, C, H, W) must require grad and ``logits`` (B,) be computed from it.
    """
    (grad,) = torch.autograd.grad(logits.sum(), images, create_graph=True)  # (B, C, H, W)
    return grad.square().sum(dim=(1, 2, 3)).mean()
