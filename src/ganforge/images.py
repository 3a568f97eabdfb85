"""Conversions between generator outputs and uint8 images, and sample grids."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from ganforge.files import atomic_path


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Map generator outputs in [-1, 1] to uint8 pixels. (B, C, H, W) float -> (B, C, H, W) uint8."""
    return ((images.float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """Map uint8 pixels to floats in [-1, 1], the range generators produce. (B, C, H, W)."""
    return images.float() / 127.5 - 1.0


def save_grid(images: torch.Tensor, path: str | Path, min_width_px: int = 512, nrow: int | None = None) -> None:
    """Save uint8 images (N, C, H, W) as one PNG grid (square-ish unless ``nrow`` images per row are asked
    for), upscaled (nearest) to be viewable."""
    image = grid_image(images, min_width_px, nrow)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def grid_image(images: torch.Tensor, min_width_px: int = 512, nrow: int | None = None) -> Image.Image:
    """uint8 images (N, C, H, W) as one grid of ``nrow`` per row (default square-ish), upscaled (nearest) to
    at least ``min_width_px``."""
    assert images.dtype == torch.uint8 and images.ndim == 4, (images.dtype, images.shape)
    nrow = nrow or max(1, int(np.ceil(np.sqrt(images.shape[0]))))
    image = pil_image(make_grid(images, nrow=nrow, padding=1, pad_value=255))  # grid (C, H', W')
    scale = max(1, math.ceil(min_width_px / image.width))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return image


def pil_image(image: torch.Tensor) -> Image.Image:
    """One uint8 image (C, H, W) as a PIL image (greyscale for one channel)."""
    assert image.dtype == torch.uint8 and image.ndim == 3, (image.dtype, image.shape)
    array = image.permute(1, 2, 0).numpy()  # (H, W, C)
    return Image.fromarray(np.ascontiguousarray(array[:, :, 0] if array.shape[2] == 1 else array))


def png_bytes(image: Image.Image) -> bytes:
    """``image`` encoded as PNG (deterministic: the same pixels give the same bytes)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_pngs(images: torch.Tensor, out_dir: str | Path, start_index: int = 0) -> list[Path]:
    """Save uint8 images (N, C, H, W) as numbered PNGs; returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(images):
        path = out_dir / f"{start_index + i:06d}.png"
        with atomic_path(path) as tmp:
            pil_image(img).save(tmp, format="PNG")
        paths.append(path)
    return paths
