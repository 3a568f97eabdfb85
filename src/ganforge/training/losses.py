"""GAN losses on raw discriminator logits, and the R1 gradient penalty."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discriminator_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """D's loss for ``kind`` in ``nonsaturating`` | ``hinge``. Logits (B,) -> scalar.

    nonsaturating: -log D(x) - log(1 - D(G(z))), the original GAN loss.
    hinge: relu(1 - D(x)) + relu(1 + D(G(z))) (Lim & Ye, 2017; used by SNGAN, BigGAN).
    """
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    assert kind == "nonsaturating", kind
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """G's loss for ``kind``: -log D(G(z)) (nonsaturating) or -D(G(z)) (hinge). Logits (B,) -> scalar."""
    if kind == "hinge":
        return -fake_logits.mean()
    assert kind == "nonsaturating", kind
    return F.softplus(-fake_logits).mean()


def r1_penalty(real_logits: torch.Tensor, reals: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ||d D(x) / d x||^2 on real images x (Mescheder et al., 2018). -> scalar.

    ``reals`` (B, C, H, W) must require grad and ``real_logits`` (B,) be computed from it.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), reals, create_graph=True)  # (B, C, H, W)
    return grad.square().sum(dim=(1, 2, 3)).mean()
