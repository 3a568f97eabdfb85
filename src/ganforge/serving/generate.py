"""``ganforge generate``: images from a verified package, as numbered PNGs and/or one grid.

Image i always comes from latent i of the seed's stream (:mod:`ganforge.latents`), whatever the batch size
or the number of processes. Under ``torchrun --nproc_per_node=N`` each rank takes every N-th batch and
writes its own images; the files are byte-identical to a single-process run.

Memory is bounded by one batch, not by the number of images: batches are produced lazily and each is written
out before the next. A grid has to hold its images until it is drawn, so it is capped at
:data:`MAX_GRID_IMAGES` images and :data:`MAX_GRID_PIXELS` pixels; a bigger grid is refused before anything is
generated rather than cut short, since a grid of only some of the images asked for would pass for all of them
(write many images with ``--out`` and grid a smaller ``-n``). Before the package loads, the output paths are
checked (:func:`ganforge.files.check_output`); before the first image, the free disk space.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ganforge import distributed
from ganforge.errors import UserError
from ganforge.files import OutputKind, check_outputs
from ganforge.images import grid_size_px, png_size_bound, save_grid, save_pngs
from ganforge.latents import latents
from ganforge.packaging.package import load_package

_GATHER_TIMEOUT_S = 600.0
# A grid is for looking at: past 64 × 64 cells each image is too small to see on any screen.
MAX_GRID_IMAGES = 4096
# 2**25 px (a ~5,800 px square, 96 MiB as RGB) stays well inside PIL's decompression-bomb limit
# (Image.MAX_IMAGE_PIXELS, ~89 Mpx), so viewers and PIL open the PNG, and bounds the memory drawing it takes
# (the images, make_grid's RGB copy and the grid: a few hundred MiB at most). It binds above 64 px resolution.
MAX_GRID_PIXELS = 2**25


def shard(count: int, batch: int, world: int, rank: int) -> tuple[range, int]:
    """This rank's share of ``count`` images in batches of ``batch``: every ``world``-th batch from batch
    ``rank``, as a lazy range of the batches' first image indices, and the number of images in them."""
    firsts = range(rank * batch, count, batch * world)
    if not firsts:
        return firsts, 0
    return firsts, len(firsts) * batch - max(0, firsts[-1] + batch - count)  # only the last batch can be short


def _size(n_bytes: int) -> str:
    """``n_bytes`` in binary units, e.g. ``3.9 MiB``."""
    if n_bytes < 1024:
        return f"{n_bytes} B"
    exponent = min(int(math.log(n_bytes, 1024)), 5)
    return f"{n_bytes / 1024**exponent:,.1f} {'BKMGTP'[exponent]}iB"


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def check_free_space(outputs: dict[str, tuple[Path, int, int, str]]) -> None:
    """Refuse outputs that would not fit on their filesystem: ``label: (path, files, bytes at most per file,
    what)``. Each file is rounded up to whole filesystem blocks; outputs on one filesystem add up."""
    by_device: dict[int, list[tuple[str, Path, int, int, str]]] = {}
    for label, (path, files, file_bytes, what) in outputs.items():
        existing = _nearest_existing(Path(path))
        stats = os.statvfs(existing)
        block = stats.f_frsize or stats.f_bsize or 4096
        on_disk = files * math.ceil(file_bytes / block) * block
        by_device.setdefault(os.stat(existing).st_dev, []).append((label, existing, files, on_disk, what))
    for entries in by_device.values():
        named = " and ".join(f"{label} {outputs[label][0]} ({what})" for label, _, _, _, what in entries)
        existing = entries[0][1]
        need, free = sum(e[3] for e in entries), shutil.disk_usage(existing).free
        if need > free:
            raise UserError(f"{named}: needs up to {_size(need)} on disk, but only {_size(free)} is free there")
        stats = os.statvfs(existing)
        files = sum(e[2] for e in entries)
        if stats.f_files and files > stats.f_favail:  # f_files is 0 where the filesystem has no inode limit
            raise UserError(f"{named}: needs {files:,} files, but only {stats.f_favail:,} more fit on that filesystem")


def _check_grid(count: int, resolution: int) -> tuple[int, int]:
    """The grid's (width, height) in pixels; a grid over :data:`MAX_GRID_PIXELS` is a :class:`UserError`."""
    width, height = grid_size_px(count, resolution)
    if width * height > MAX_GRID_PIXELS:
        fits = next((n for n in range(count, 0, -1) if math.prod(grid_size_px(n, resolution)) <= MAX_GRID_PIXELS), 0)
        raise UserError(f"--grid: {count} images of {resolution}×{resolution} make a {width:,}×{height:,} px grid, "
                        f"over the {MAX_GRID_PIXELS:,} px limit; at most {fits} images fit at this resolution")
    return width, height


def _check_arguments(package_dir: str | Path, count: int, out_dir: str | Path | None, grid_path: str | Path | None,
                     batch: int, truncation: float | None) -> None:
    """Refuse, in one line, arguments :func:`generate` cannot honour, before the package loads."""
    if out_dir is None and grid_path is None:
        raise UserError("give --out DIR for PNG files, --grid FILE for one grid, or both")
    if count < 1 or batch < 1:
        raise UserError(f"-n {count} --batch {batch}: both must be at least 1")
    if truncation is not None and not 0 < truncation < math.inf:
        raise UserError(f"--truncation: expected a positive number, got {truncation}")
    if grid_path is not None and count > MAX_GRID_IMAGES:
        raise UserError(f"--grid: at most {MAX_GRID_IMAGES} images in one grid, got -n {count} "
                        "(write them with --out DIR, and grid a smaller -n)")
    outputs: dict[str, tuple[str | Path, OutputKind]] = {}
    if out_dir is not None:
        outputs["--out"] = (out_dir, "dir")
    if grid_path is not None:
        outputs["--grid"] = (grid_path, "file")
        if out_dir is not None and os.path.abspath(grid_path) == os.path.abspath(out_dir):
            raise UserError(f"--grid {grid_path}: the same path as --out")
    for label, output in outputs.items():  # a grid may sit among the PNGs; neither may touch the package
        check_outputs({label: output}, inputs={"--package": package_dir})
    if grid_path is not None and Path(grid_path).suffix.lower() != ".png":  # it is written as PNG, whatever the name
        raise UserError(f"--grid {grid_path}: the grid is a PNG; give a file name ending in .png")


def _check_space(count: int, resolution: int, channels: int, out_dir: str | Path | None,
                 grid_path: str | Path | None) -> None:
    """Refuse up front a disk without room for the worst-case PNG sizes."""
    space: dict[str, tuple[Path, int, int, str]] = {}
    if out_dir is not None:
        space["--out"] = (Path(out_dir), count, png_size_bound(resolution, resolution, channels),
                          f"{count:,} PNGs of {resolution}×{resolution}×{channels}")
    if grid_path is not None:
        width, height = _check_grid(count, resolution)
        space["--grid"] = (Path(grid_path), 1, png_size_bound(width, height, 3), f"a {width}×{height} PNG")
    check_free_space(space)


def generate(package_dir: str | Path, count: int, out_dir: str | Path | None = None,
             grid_path: str | Path | None = None, seed: int = 0, batch: int = 64, runtime: str = "torch",
             truncation: float | None = None, model: str = "winner") -> float:
    """Generate ``count`` images from a verified package as PNGs in ``out_dir`` and/or one grid PNG.

    Args:
        package_dir: the package directory (``dist/generator``).
        count: number of images.
        out_dir: directory for ``000000.png``, ``000001.png``, ...; None writes no files.
        grid_path: one grid PNG of all images (at most :data:`MAX_GRID_IMAGES`); None writes no grid.
        seed: latent stream; the same seed always gives the same images.
        batch: images per forward pass (does not change the images).
        runtime: ``torch`` or ``onnxruntime``.
        truncation: draw latents from a normal truncated at ±truncation; None for the plain normal.
        model: ``winner`` or ``baseline`` (when packaged).

    Returns the images/s achieved (all ranks together).
    """
    _check_arguments(package_dir, count, out_dir, grid_path, batch, truncation)
    package = load_package(package_dir, runtime, model)
    channels, resolution = package.spec.channels, package.spec.resolution
    _check_space(count, resolution, channels, out_dir, grid_path)
    world, rank = distributed.world_size(), distributed.rank()
    firsts, mine = shard(count, batch, world, rank)  # image indices stay global
    main = distributed.is_main_process()
    # The grid's images, in order, on rank 0; the other ranks keep their own until the gather.
    grid = None
    if grid_path is not None and main:
        grid = torch.empty(count, channels, resolution, resolution, dtype=torch.uint8)  # (count, C, R, R)
    parts: list[tuple[int, torch.Tensor]] = []
    with distributed.process_group(torch.device("cpu"), _GATHER_TIMEOUT_S):
        start = time.perf_counter()
        with tqdm(total=mine, unit="img", desc=f"generate ({runtime})", disable=not main) as bar:
            for first in firsts:
                n = min(batch, count - first)
                images = package.generate(latents(seed, first, n, package.spec.z_dim, truncation))  # (n, C, R, R)
                if out_dir is not None:
                    save_pngs(images, out_dir, start_index=first)
                if grid is not None:
                    grid[first:first + n] = images
                elif grid_path is not None:
                    parts.append((first, images))
                bar.update(n)
        if grid_path is not None:
            gathered = distributed.gather_to_main(parts)  # at most MAX_GRID_IMAGES images in all
            if gathered is not None:
                assert grid is not None
                for first, images in (part for rank_parts in gathered for part in rank_parts):
                    grid[first:first + len(images)] = images
                save_grid(grid, grid_path)
        distributed.barrier()
        elapsed = time.perf_counter() - start
    return count / elapsed
