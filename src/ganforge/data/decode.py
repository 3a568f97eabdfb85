"""Decode one image file into a square uint8 array at the target resolution, or say why it is bad.

Odd but valid images are converted: EXIF orientation is applied; palette, RGBA/LA (composited on a stated
background), 16-bit and CMYK images become 8-bit RGB or grey. Decompression bombs are refused.

Memory is bounded by the source pixels that :data:`MAX_PIXELS` admits and by the output: no intermediate image
is larger than ``max(width * height, resolution ** 2)`` pixels, whatever the file's aspect ratio.
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
_BLOCK_PIXELS = 1 << 18  # a 16-bit image is scaled this many pixels at a time


class BadImage(Exception):
    """A file that cannot become a training image; the message is the reason recorded in the manifest."""


@dataclass(frozen=True)
class DecodeOptions:
    """How files become arrays.

    Args:
        resolution: output side in pixels.
        resize: ``center-crop`` keeps the central square; ``pad`` resizes the whole image so its long side is
            ``resolution`` and letterboxes it, centred, onto ``background``.
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
    out = np.empty(array.shape, dtype=np.uint8)
    rows = max(1, _BLOCK_PIXELS // max(1, array.shape[1]))
    for start in range(0, array.shape[0], rows):  # float64 of a whole image would be 8 bytes a source pixel
        block = array[start:start + rows].astype(np.float64)
        block *= 255.0 / top
        out[start:start + rows] = np.clip(np.rint(block, out=block), 0, 255, out=block)
    return Image.fromarray(out)


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


def _fit(image: Image.Image, options: DecodeOptions) -> Image.Image:
    """RGB image -> RGB (R, R): the central square resized, or the whole image resized to fit and padded."""
    side, (width, height) = options.resolution, image.size
    if options.resize == "center-crop" or width == height:
        short = min(width, height)
        left, top = (width - short) // 2, (height - short) // 2
        if width != height:
            image = image.crop((left, top, left + short, top + short))
        if image.size != (side, side):
            image = image.resize((side, side), Image.Resampling.LANCZOS)  # antialiased
        return image
    # Resize first, then pad: a canvas at the source's long side is sized by the file's claim (a 1x30000 PNG of
    # 167 bytes asked for 30000x30000). The long side becomes R; the short side keeps the aspect, rounded to
    # the nearest pixel and at least one.
    long = max(width, height)
    fitted = tuple(max(1, (2 * n * side + long) // (2 * long)) for n in (width, height))
    if image.size != fitted:
        image = image.resize(fitted, Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (side, side), BACKGROUNDS[options.background])
    canvas.paste(image, ((side - fitted[0]) // 2, (side - fitted[1]) // 2))
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
        return np.asarray(_fit(rgb, options), dtype=np.uint8), was_grey
    except Exception as e:  # malformed EXIF, exotic modes: a bad file, not a crash of the stage
        raise BadImage(f"corrupt or unsupported image ({type(e).__name__}: {e})") from None
