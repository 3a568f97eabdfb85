"""Training checkpoints: plain tensors and numbers saved with torch.save, loaded with weights_only=True,
and the RNG states a bit-identical resume needs."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ganforge.errors import UserError
from ganforge.files import atomic_path


def previous_checkpoint(path: str | Path) -> Path:
    """Where :func:`save_checkpoint` keeps the checkpoint it replaced: ``checkpoint-previous.pt`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}-previous{path.suffix}")


def save_checkpoint(path: str | Path, state: dict[str, Any], keep_previous: bool = False) -> None:
    """Write a checkpoint atomically: the previous file stays intact until the new one is complete.

    With ``keep_previous`` the replaced checkpoint moves to :func:`previous_checkpoint`, the fallback of
    :func:`load_latest_checkpoint` when the newest one turns out unreadable.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
        if keep_previous and path.is_file():
            os.replace(path, previous_checkpoint(path))


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load a checkpoint without unpickling code; a corrupt file, one that is not a mapping of names, or one
    lacking a ``required`` key is a one-line :class:`UserError`."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: checkpoint not found") from None
    except Exception as e:  # torch raises several types for truncated or foreign files
        message = (str(e).strip().splitlines() or [""])[0][:300]  # the unpickler's messages run to many lines
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}: {message})") from None
    if not isinstance(state, dict) or not all(isinstance(key, str) for key in state):
        raise UserError(f"{path}: not a ganforge checkpoint (expected a mapping of names, got {type(state).__name__})")
    for key in required:
        if key not in state:
            raise UserError(f"{path}: {key}: missing from the checkpoint")
    return state


def load_latest_checkpoint(path: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The checkpoint at ``path`` and where it came from, or None when there is none.

    An unreadable one (truncated, corrupt, or missing because a save was cut short) falls back to
    :func:`previous_checkpoint`, saying so on stderr. With no previous checkpoint it is a :class:`UserError`:
    training never silently restarts from zero.
    """
    path = Path(path)
    previous = previous_checkpoint(path)
    if not path.is_file():
        if not previous.is_file():
            return None
        print(f"train: {path} is missing but {previous} is there (a save was cut short); resuming from it",
              file=sys.stderr)
        return load_checkpoint(previous), previous
    try:
        return load_checkpoint(path), path
    except UserError as e:
        if not previous.is_file():
            raise UserError(f"{e}; there is no previous checkpoint to fall back to: delete {path} to start "
                            "from scratch") from None
        print(f"train: {e}; falling back to the previous checkpoint, {previous}", file=sys.stderr)
        return load_checkpoint(previous), previous


def capture_rng() -> dict[str, Any]:
    """The global torch (CPU and CUDA), numpy and python RNG states, in a form ``weights_only`` loads."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "torch_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached": cached},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng(state: dict[str, Any], source: str = "checkpoint") -> None:
    """Put back what :func:`capture_rng` captured (read from ``source``); anything else is a one-line
    :class:`UserError`, since the three libraries each raise their own exception types for a bad state."""
    try:
        torch.set_rng_state(state["torch"])
        if state["torch_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["torch_cuda"])
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
        p = state["python"]
        random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as e:
        message = (str(e).strip().splitlines() or [""])[0][:200]
        raise UserError(f"{source}: rng: not a captured RNG state ({type(e).__name__}: {message})") from None
