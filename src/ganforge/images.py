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

_GRID_PADDING = 1  # pixels between grid cells


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
    nrow = nrow or _square_nrow(images.shape[0])
    image = pil_image(make_grid(images, nrow=nrow, padding=_GRID_PADDING, pad_value=255))  # grid (C, H', W')
    scale = max(1, math.ceil(min_width_px / image.width))
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    return image


def grid_size_px(count: int, resolution: int, min_width_px: int = 512, nrow: int | None = None) -> tuple[int, int]:
    """(width, height) in pixels of :func:`grid_image` for ``count`` images of ``resolution``², without drawing
    it: make_grid's layout (one padding pixel around every cell; a single image unpadded), then the upscale."""
    assert count >= 1 and resolution >= 1, (count, resolution)
    if count == 1:
        width = height = resolution
    else:
        columns = min(nrow or _square_nrow(count), count)
        rows = math.ceil(count / columns)
        cell = resolution + _GRID_PADDING
        width, height = columns * cell + _GRID_PADDING, rows * cell + _GRID_PADDING
    scale = max(1, math.ceil(min_width_px / width))
    return width * scale, height * scale


def png_size_bound(width: int, height: int, channels: int) -> int:
    """Bytes that a ``width`` × ``height`` PNG of ``channels`` 8-bit channels can take at most, as PIL writes it:
    the filtered rows (one filter byte each), zlib's worst case for incompressible data (``deflateBound``), one
    IDAT chunk per 64 KiB PIL hands the encoder, and the signature, IHDR, IEND and room for ancillary chunks."""
    raw = height * (1 + width * channels)
    deflated = raw + (raw >> 12) + (raw >> 14) + (raw >> 25) + 13 + 6  # deflateBound + zlib header and adler32
    return deflated + 12 * (deflated // 65536 + 1) + 8 + 25 + 12 + 256


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


def npy_bytes(images: torch.Tensor) -> bytes:
    """uint8 images (N, C, H, W) as a ``.npy`` file (``numpy.load`` reads it back; no pickling)."""
    assert images.dtype == torch.uint8 and images.ndim == 4, (images.dtype, images.shape)
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(images.numpy()), allow_pickle=False)
    return buffer.getvalue()


def _square_nrow(count: int) -> int:
    return math.isqrt(max(count, 1) - 1) + 1  # ceil(sqrt(count)), exact for any count


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
