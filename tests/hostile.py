"""A folder of hostile and awkward image files, generated for tests and the reliability benchmark."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

# name -> whether a captioner should caption it (True) or refuse it with one line (False)
EXPECTED = {
    "empty.jpg": False,
    "random_bytes.jpg": False,
    "truncated.jpg": False,
    "huge_30000x30000.png": False,
    "document.pdf.png": False,
    "rgba.png": True,
    "palette_transparency.png": True,
    "cmyk.jpg": True,
    "sixteen_bit.png": True,
    "one_bit.png": True,
    "animated.gif": True,
    "exif_rotated.jpg": True,
}


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height pixels, with one tiny IDAT: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def write_hostile_folder(folder: Path) -> dict[str, bool]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    scene = Image.fromarray(rng.integers(0, 255, (48, 64, 3)).astype(np.uint8))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "random_bytes.jpg").write_bytes(rng.integers(0, 256, 4096).astype(np.uint8).tobytes())
    scene.save(folder / "full.jpg", quality=90)
    data = (folder / "full.jpg").read_bytes()
    (folder / "full.jpg").unlink()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "huge_30000x30000.png").write_bytes(_png_header_only(30000, 30000))
    (folder / "document.pdf.png").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n")
    scene.convert("RGBA").save(folder / "rgba.png")
    palette = scene.convert("P")
    palette.info["transparency"] = 0
    palette.save(folder / "palette_transparency.png", transparency=0)
    scene.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.asarray(scene.convert("L"), np.uint16) * 257).save(folder / "sixteen_bit.png")
    scene.convert("1").save(folder / "one_bit.png")
    frames = [scene, scene.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6
    scene.save(folder / "exif_rotated.jpg", exif=exif)
    return dict(EXPECTED)
