"""``ganforge generate``: images from a verified package, as numbered PNGs and/or one grid.

Image i always comes from latent i of the seed's stream (:mod:`ganforge.latents`), whatever the batch size
or the number of processes. Under ``torchrun --nproc_per_node=N`` each rank takes every N-th batch and
writes its own images; the files are byte-identical to a single-process run.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ganforge import distributed
from ganforge.errors import UserError
from ganforge.images import save_grid, save_pngs
from ganforge.latents import latents
from ganforge.packaging.package import load_package

_GATHER_TIMEOUT_S = 600.0


def check_writable(directory: str | Path, flag: str) -> None:
    """Create ``directory`` if needed and check that a file can be written there (a clear error, not a
    traceback halfway through)."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".ganforge-write-check."):
            pass
    except OSError as e:
        raise UserError(f"{flag} {directory}: not writable ({e.strerror or e})") from None


def generate(package_dir: str | Path, count: int, out_dir: str | Path | None = None,
             grid_path: str | Path | None = None, seed: int = 0, batch: int = 64, runtime: str = "torch",
             truncation: float | None = None, model: str = "winner") -> float:
    """Generate ``count`` images from a verified package as PNGs in ``out_dir`` and/or one grid PNG.

    Args:
        package_dir: the package directory (``dist/generator``).
        count: number of images.
        out_dir: directory for ``000000.png``, ``000001.png``, ...; None writes no files.
        grid_path: one grid PNG of all images; None writes no grid.
        seed: latent stream; the same seed always gives the same images.
        batch: images per forward pass (does not change the images).
        runtime: ``torch`` or ``onnxruntime``.
        truncation: draw latents from a normal truncated at ±truncation; None for the plain normal.
        model: ``winner`` or ``baseline`` (when packaged).

    Returns the images/s achieved (all ranks together).
    """
    if out_dir is None and grid_path is None:
        raise UserError("give --out DIR for PNG files, --grid FILE for one grid, or both")
    if truncation is not None and truncation <= 0:
        raise UserError(f"--truncation: expected a positive number, got {truncation}")
    if out_dir is not None:
        check_writable(out_dir, "--out")
    if grid_path is not None:
        check_writable(Path(grid_path).parent, "--grid")
    package = load_package(package_dir, runtime, model)
    world, rank = distributed.world_size(), distributed.rank()
    firsts = list(range(0, count, batch))[rank::world]  # this rank's batches; image indices stay global
    mine = sum(min(batch, count - first) for first in firsts)
    grid_parts: list[tuple[int, torch.Tensor]] = []
    with distributed.process_group(torch.device("cpu"), _GATHER_TIMEOUT_S):
        start = time.perf_counter()
        main = distributed.is_main_process()
        with tqdm(total=mine, unit="img", desc=f"generate ({runtime})", disable=not main) as bar:
            for first in firsts:
                n = min(batch, count - first)
                images = package.generate(latents(seed, first, n, package.spec.z_dim, truncation))  # (n, C, R, R)
                if out_dir is not None:
                    save_pngs(images, out_dir, start_index=first)
                if grid_path is not None:
                    grid_parts.append((first, images))
                bar.update(n)
        if grid_path is not None:
            gathered = distributed.gather_to_main(grid_parts)
            if gathered is not None:
                parts = sorted((part for rank_parts in gathered for part in rank_parts), key=lambda p: p[0])
                save_grid(torch.cat([images for _, images in parts]), grid_path)
        distributed.barrier()
        elapsed = time.perf_counter() - start
    return count / elapsed
