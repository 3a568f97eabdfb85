"""Training checkpoints: plain tensors and numbers saved with torch.save, loaded with weights_only=True."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ganforge.errors import UserError
from ganforge.files import atomic_path


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a checkpoint atomically: the previous file stays intact until the new one is complete."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint without unpickling code; a corrupt file is a one-line :class:`UserError`."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
