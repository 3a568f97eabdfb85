"""The ``ganforge`` command: use a generator package.

    ganforge generate --package dist/generator -n 64 --out DIR [--grid FILE] [--seed S] [--batch B]
                      [--runtime torch|onnxruntime]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ganforge.entry import run_main
from ganforge.errors import UserError
from ganforge.images import save_grid, save_pngs
from ganforge.latents import latents
from ganforge.packaging.package import RUNTIMES, load_package


def _int_at_least(minimum: int, maximum: int = 2**31 - 1):
    """An argparse type accepting integers in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"expected an integer from {minimum} to {maximum}, got {text!r}")
        return value

    return parse


def generate(package_dir: str | Path, count: int, out_dir: str | Path | None = None,
             grid_path: str | Path | None = None, seed: int = 0, batch: int = 64,
             runtime: str = "torch") -> float:
    """Generate ``count`` images from a verified package as PNGs in ``out_dir`` and/or one grid PNG.

    The same seed always gives the same images, whatever the batch size. Returns the images/s achieved.
    """
    if out_dir is None and grid_path is None:
        raise UserError("give --out DIR for PNG files, --grid FILE for one grid, or both")
    package = load_package(package_dir, runtime=runtime)
    grid_images = []
    start = time.perf_counter()
    with tqdm(total=count, unit="img", desc=f"generate ({runtime})") as progress:
        for first in range(0, count, batch):
            n = min(batch, count - first)
            images = package.generate(latents(seed, first, n, package.spec.z_dim))  # (n, C, R, R) uint8
            if out_dir is not None:
                save_pngs(images, out_dir, start_index=first)
            if grid_path is not None:
                grid_images.append(images)
            progress.update(n)
    img_per_s = count / (time.perf_counter() - start)
    if grid_path is not None:
        save_grid(torch.cat(grid_images), grid_path)
    return img_per_s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="ganforge", description="Use a ganforge generator package.")
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="write images from a package")
    gen.add_argument("--package", required=True, help="package directory, e.g. dist/generator")
    gen.add_argument("-n", "--num", type=_int_at_least(1), default=64, help="number of images (default 64)")
    gen.add_argument("--out", help="directory for numbered PNG files")
    gen.add_argument("--grid", help="write all images as one grid PNG")
    gen.add_argument("--seed", type=_int_at_least(0), default=0, help="latent seed (default 0)")
    gen.add_argument("--batch", type=_int_at_least(1), default=64, help="images per forward pass (default 64)")
    gen.add_argument("--runtime", choices=RUNTIMES, default="torch")

    def run() -> None:
        args = parser.parse_args(argv)
        img_per_s = generate(args.package, args.num, args.out, args.grid, args.seed, args.batch, args.runtime)
        where = ", ".join(str(p) for p in (args.out, args.grid) if p)
        print(f"generated {args.num} images at {img_per_s:.0f} img/s -> {where}")

    run_main(run, "ganforge")


if __name__ == "__main__":
    main()
