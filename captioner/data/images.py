"""The one image reader every command uses (features, training, captioning, evaluation, VQA).

Pillow decodes; EXIF orientation is applied; every mode becomes 8-bit RGB (transparency composited on
white); the result is resized to a square. Anything unreadable (missing, unreadable folder, truncated,
not an image, a decompression bomb) raises CaptionerError with one line, or, through `try_load_image`,
is returned as that line so that the caller can skip the image and go on.
"""

from __future__ import annotations

import io
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from captioner.errors import CaptionerError

MAX_PIXELS = 40_000_000  # refuse larger images before decoding them (decompression bombs)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")  # Pillow decoders allowed; whatever the file is named


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode; transparent pixels become white, 16-bit values are scaled."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def open_image(path: str | Path) -> Image.Image:
    """Decoded, upright, RGB Pillow image at its original size."""
    path = Path(path)
    try:
        status = path.stat()
    except FileNotFoundError:
        raise CaptionerError(f"{path}: no such file") from None
    except OSError as exc:  # e.g. a folder on the way that this user may not enter
        raise CaptionerError(f"{path}: cannot read ({exc.strerror})") from None
    if stat.S_ISDIR(status.st_mode):
        raise CaptionerError(f"{path}: is a directory, not an image")
    if status.st_size == 0:
        raise CaptionerError(f"{path}: is empty (0 bytes)")
    return _decode(path, str(path))


def _decode(source, name: str) -> Image.Image:
    """Decode a path or a file object (named `name` in errors) as `open_image` does."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source, formats=FORMATS) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise CaptionerError(f"{name}: {width}x{height} pixels is more than the {MAX_PIXELS:,} allowed")
                image.seek(0)  # animated images: first frame
                image.load()
                upright = ImageOps.exif_transpose(image)
                return to_rgb(upright)
    except CaptionerError:
        raise
    except UnidentifiedImageError:
        raise CaptionerError(f"{name}: not a JPEG, PNG, WebP, GIF or BMP image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise CaptionerError(
            f"{name}: declares more than the {MAX_PIXELS:,} pixels allowed (decompression bomb?)"
        ) from None
    except PermissionError as exc:
        raise CaptionerError(f"{name}: cannot read ({exc.strerror})") from None
    except FileNotFoundError:
        raise CaptionerError(f"{name}: no such file (deleted while the command ran?)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise CaptionerError(f"{name}: cannot decode image ({exc})") from None


def read_image_bytes(data: bytes, size: int, name: str = "upload") -> tuple[np.ndarray, tuple[int, int]]:
    """`read_image` of an encoded file held in memory (an HTTP upload); errors name it `name`."""
    if not data:
        raise CaptionerError(f"{name}: is empty (0 bytes)")
    return _resized(_decode(io.BytesIO(data), name), size)


def _resized(image: Image.Image, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    upright = image.size
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8), upright  # (size, size, 3)


def read_image(path: str | Path, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Read `path`, resized to `size` x `size`, and its upright (width, height) before resizing.

    Returns:
        np.ndarray: uint8, shape (size, size, 3); and (width, height) after EXIF orientation.
    """
    return _resized(open_image(path), size)


def load_image(path: str | Path, size: int) -> np.ndarray:
    """`read_image` without the size: uint8 (size, size, 3)."""
    return read_image(path, size)[0]


def try_load_image(path: str | Path, size: int) -> tuple[np.ndarray | None, str | None]:
    """`load_image` that reports instead of raising: (image, None), or (None, the one-line reason)."""
    try:
        return load_image(path, size), None
    except CaptionerError as exc:
        return None, str(exc)
