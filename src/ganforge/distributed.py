"""Process-group facts read from torchrun's environment. Only the main process writes anything."""

from __future__ import annotations

import os


def rank() -> int:
    """Global rank of this process (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes in the job (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on the one process that writes logs, checkpoints, metrics and outs."""
    return rank() == 0


def rank_seed(base_seed: int) -> int:
    """A per-rank seed derived from the base seed, so ranks draw different latents and batches."""
    return base_seed + 1_000_003 * rank()
