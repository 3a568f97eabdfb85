"""Learning-rate schedules: linear warm-up, then constant or cosine decay, as a torch LambdaLR."""

from __future__ import annotations

import math

import torch


def lr_scheduler(optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int,
                 total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Scale the optimizer's lr by ``step / warmup_steps`` during warm-up, then by 1 (``constant``) or by a
    half cosine from 1 to 0 at ``total_steps`` (``cosine``).

    The factor is a closure, so it is never saved in the scheduler's state: a run resumed with a longer
    ``kimg`` follows the schedule of the new length from its current step.
    """
    assert kind in ("constant", "cosine"), kind

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
