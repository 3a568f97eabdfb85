"""Decode one image file into a square uint8 array at the target resolution, or say why it is bad.

Odd but valid images are converted: EXIF orientation is applied; palette, RGBA/LA (composited on a stated
background), 16-bit and CMYK images become 8-bit RGB or grey. Decompression bombs are refused.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse images above this many pixels before decoding them (PIL's own check, made strict below).
MAX_PIXELS = 64 * 1024 * 1024
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255)}


class BadImage(Exception):
    """A file that cannot become a training image; the message is the reason recorded in the manifest."""


@dataclass(frozen=True)
class DecodeOptions:
    """How files become arrays.

    Args:
        resolution: output side in pixels.
        resize: ``center-crop`` keeps the central square; ``pad`` letterboxes onto ``background``.
        background: colour under transparent pixels and around padded images.
    """

    resolution: int
    resize: Literal["center-crop", "pad"] = "center-crop"
    background: Literal["black", "white"] = "black"


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer/float grey images -> 8-bit 'L', scaled by the type's range."""
    array = np.asarray(image)
    if array.dtype == np.uint8:
        return image.convert("L")
    top = 65535.0 if image.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
    if image.mode == "F":
        top = max(float(array.max(initial=0)), 1.0)
    return Image.fromarray(np.clip(np.rint(array.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8))


def _flatten(image: Image.Image, background: tuple[int, int, int]) -> tuple[Image.Image, bool]:
    """Any PIL mode -> ('RGB' image, was_grey)."""
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa"):
        was_grey = image.mode == "LA"
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB"), was_grey
    if image.mode in _GREY_MODES:
        grey = image.convert("L") if image.mode == "1" else _to_8bit(image)
        return grey.convert("RGB"), True
    return image.convert("RGB"), False  # RGB, CMYK, YCbCr, LAB, HSV


def _square(image: Image.Image, options: DecodeOptions) -> Image.Image:
    width, height = image.size
    if width == height:
        return image
    side = min(width, height) if options.resize == "center-crop" else max(width, height)
    if options.resize == "center-crop":
        left, top = (width - side) // 2, (height - side) // 2
        return image.crop((left, top, left + side, top + side))
    canvas = Image.new("RGB", (side, side), BACKGROUNDS[options.background])
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def decode_image(data: bytes, options: DecodeOptions) -> tuple[np.ndarray, bool]:
    """Decode file bytes -> (uint8 array (R, R, 3), was_grey). Raises :class:`BadImage` with a reason."""
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise BadImage(f"decompression bomb refused: {image.width}x{image.height} pixels")
            image.load()
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"decompression bomb refused: {e}") from None
    except UnidentifiedImageError:
        raise BadImage("not an image") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"corrupt or truncated image ({e})") from None
    try:
        image = ImageOps.exif_transpose(image)
        rgb, was_grey = _flatten(image, BACKGROUNDS[options.background])
        rgb = _square(rgb, options)
        if rgb.size != (options.resolution, options.resolution):
            rgb = rgb.resize((options.resolution, options.resolution), Image.Resampling.LANCZOS)  # antialiased
        return np.asarray(rgb, dtype=np.uint8), was_grey
    except Exception as e:  # malformed EXIF, exotic modes: a bad file, not a crash of the stage
        raise BadImage(f"corrupt or unsupported image ({type(e).__name__}: {e})") from None
