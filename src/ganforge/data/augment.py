"""Train-time differentiable augmentation (DiffAugment-style) with an optional ADA-style adaptive probability.

The same random transform family is applied to real and fake images before D, and gradients flow
through it to G. Written here rather than taken from a library: the transforms are a few tensor ops, and
the per-sample probability gate (ADA) needs to wrap them, which augmentation libraries do not offer for
differentiable batched ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ganforge.config import AUGMENT_POLICIES


def _color(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    x = x + (torch.rand(b, 1, 1, 1, generator=g, device=x.device) - 0.5)  # brightness
    if x.shape[1] == 3:
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (torch.rand(b, 1, 1, 1, generator=g, device=x.device) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (torch.rand(b, 1, 1, 1, generator=g, device=x.device) + 0.5) + mean  # contrast


def _translation(x: torch.Tensor, g: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    b, _, h, w = x.shape
    shift_y, shift_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-shift_y, shift_y + 1, (b, 1, 1), generator=g, device=x.device)
    tx = torch.randint(-shift_x, shift_x + 1, (b, 1, 1), generator=g, device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    src_y = (rows + ty + 1).clamp(0, h + 1)  # (B, H, 1) indices into the zero-padded image
    src_x = (cols + tx + 1).clamp(0, w + 1)  # (B, 1, W)
    padded = F.pad(x, (1, 1, 1, 1))  # (B, C, H+2, W+2); out-of-range reads land on the zero border
    batch = torch.arange(b, device=x.device).view(b, 1, 1)
    return padded.permute(0, 2, 3, 1)[batch, src_y, src_x].permute(0, 3, 1, 2)  # (B, C, H, W)


def _cutout(x: torch.Tensor, g: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    b, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), generator=g, device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), generator=g, device=x.device)
    top, left = cy - ch // 2, cx - cw // 2  # (B, 1, 1): the square may hang over the border
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (rows >= top) & (rows < top + ch) & (cols >= left) & (cols < left + cw)  # (B, H, W)
    return x * (~inside).unsqueeze(1).to(x.dtype)


_OPS = {"color": _color, "translation": _translation, "cutout": _cutout}
assert tuple(_OPS) == AUGMENT_POLICIES


class DiffAugment:
    """Apply a policy to a batch with per-sample probability ``p``.

    Args:
        policy: augmentation names, e.g. ("color", "translation", "cutout").
        seed: seed of the augmentation random stream.
        p: probability that a sample is augmented (1.0 is plain DiffAugment; ADA adapts it).
        device: device of the images (and so of the random stream).
    """

    def __init__(self, policy: tuple[str, ...], seed: int, p: float = 1.0, device: str | torch.device = "cpu") -> None:
        self.policy = policy
        self.p = p
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def state_dict(self) -> dict:
        return {"p": self.p, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.p = state["p"]
        self.generator.set_state(state["generator"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W) in [-1, 1] -> augmented (B, C, H, W), differentiable in x."""
        if not self.policy or self.p <= 0:
            return x
        out = x
        for name in self.policy:
            out = _OPS[name](out, self.generator)
        if self.p >= 1:
            return out
        draw = torch.rand(x.shape[0], 1, 1, 1, generator=self.generator, device=x.device)  # (B, 1, 1, 1)
        gate = (draw < self.p).to(x.dtype)
        return gate * out + (1 - gate) * x


class AdaptiveProbability:
    """ADA-style controller: raise p when D is overconfident on reals, lower it otherwise.

    Args:
        target: desired E[sign(D(real))]; about 0.6 in the ADA paper.
        speed_kimg: images (thousands) for p to move from 0 to 1 at full signal.
        interval_steps: steps between adjustments.
    """

    def __init__(self, target: float, speed_kimg: float, interval_steps: int = 4) -> None:
        self.target, self.speed_kimg, self.interval_steps = target, speed_kimg, interval_steps
        self.p = 0.0
        self.signs: list[float] = []
        self.nimg = 0

    def state_dict(self) -> dict:
        return {"p": self.p, "signs": list(self.signs), "nimg": self.nimg}

    def load_state_dict(self, state: dict) -> None:
        self.p, self.signs, self.nimg = state["p"], list(state["signs"]), state["nimg"]

    def observe(self, real_sign_mean: float, batch_nimg: int) -> None:
        """Record mean(sign(D(real))) over a batch of ``batch_nimg`` real images (all ranks' mean under DDP)."""
        self.signs.append(float(real_sign_mean))
        self.nimg += batch_nimg
        if len(self.signs) >= self.interval_steps:
            overfit = sum(self.signs) / len(self.signs)  # r_t in the ADA paper
            step = self.nimg / (self.speed_kimg * 1000)
            self.p = min(1.0, max(0.0, self.p + step * (1 if overfit > self.target else -1)))
            self.signs.clear()
            self.nimg = 0
