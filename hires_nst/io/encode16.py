"""Encoders Pillow lacks: 16-bit RGB PNG (written here with zlib and struct) and TIFF (tifffile).

Pillow has no 48-bit colour mode, so it cannot write 16-bit RGB; the renderer's result is float,
and a print deserves more than 8 bits of it (smooth skies band at 8 bits after a printer's curves).
TIFF, 8 or 16 bits, goes through tifffile, which also writes BigTIFF past 4 GB. No well-kept library
writes a 16-bit RGB PNG with DPI, an ICC profile and text (OpenCV writes the pixels only; pypng has
no iCCP or iTXt), so that one writer stays. Both carry the same metadata as the 8-bit path:
resolution in dots per inch, an ICC profile, and a text description (the settings).
"""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import numpy as np

BLOCK_BYTES = 1 << 20  # rows are encoded in blocks of about this many raw bytes
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METRES_PER_INCH = 0.0254


def to_uint16(array: np.ndarray) -> np.ndarray:
    """(H, W, 3) float in [0, 1] -> (H, W, 3) uint16 in [0, 65535]."""
    return np.round(np.clip(array, 0.0, 1.0) * 65535.0).astype(np.uint16)


def _rows_per_block(width: int) -> int:
    return max(1, BLOCK_BYTES // (width * 6))


# --- PNG ------------------------------------------------------------------------------------------


def _chunk(handle: BinaryIO, kind: bytes, data: bytes) -> None:
    handle.write(struct.pack(">I", len(data)) + kind + data)
    handle.write(struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_png16(handle: BinaryIO, pixels: np.ndarray, *, dpi: int | None = None, icc: bytes | None = None,
                text: dict[str, str] | None = None) -> None:
    """Write (H, W, 3) uint16 as a 16-bit RGB PNG (colour type 2, 'Up' filter on every row)."""
    height, width = pixels.shape[:2]
    handle.write(PNG_SIGNATURE)
    _chunk(handle, b"IHDR", struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0))
    if icc:
        _chunk(handle, b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if dpi:
        per_metre = round(dpi / METRES_PER_INCH)
        _chunk(handle, b"pHYs", struct.pack(">IIB", per_metre, per_metre, 1))
    for key, value in (text or {}).items():  # iTXt: keyword, no compression, no language, UTF-8 text
        _chunk(handle, b"iTXt", key.encode("latin-1") + b"\x00\x00\x00\x00\x00" + value.encode("utf-8"))
    big_endian = pixels.astype(">u2").reshape(height, width * 6 // 2).view(np.uint8)  # (H, W*6) bytes
    compressor = zlib.compressobj(6)
    previous = np.zeros(width * 6, np.uint8)
    step = _rows_per_block(width)
    for top in range(0, height, step):
        rows = big_endian[top:top + step]
        above = np.vstack([previous[None], rows[:-1]])
        filtered = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
        filtered[:, 0] = 2  # filter type Up: each byte minus the byte above, modulo 256
        filtered[:, 1:] = rows - above
        previous = rows[-1]
        data = compressor.compress(filtered.tobytes())
        if data:
            _chunk(handle, b"IDAT", data)
    _chunk(handle, b"IDAT", compressor.flush())
    _chunk(handle, b"IEND", b"")


# --- TIFF -----------------------------------------------------------------------------------------

CLASSIC_TIFF_LIMIT = 2**32 - 2**25  # bytes: a classic TIFF's offsets are 32-bit (tifffile's own margin)


def needs_bigtiff(raw_bytes: int) -> bool:
    """BigTIFF (64-bit offsets) when the pixels could pass the classic format's 4 GB: deflate
    rarely grows data, but a noisy print-size render barely shrinks, so the raw size decides."""
    return raw_bytes > CLASSIC_TIFF_LIMIT


def write_tiff(handle: BinaryIO, pixels: np.ndarray, *, dpi: int | None = None, icc: bytes | None = None,
               description: str | None = None, software: str = "hires-nst") -> None:
    """Write (H, W, 3) uint8 or uint16 as an RGB TIFF through tifffile: deflate with horizontal
    differencing (predictor 2) in strips of about ``BLOCK_BYTES``, BigTIFF past 4 GB."""
    import tifffile  # pure Python over numpy; only TIFF outputs need it

    height, width = pixels.shape[:2]
    rows = max(1, BLOCK_BYTES // (width * 3 * pixels.itemsize))
    # Named: tifffile reads a stream's name, and that of an os.fdopen file is its descriptor (an int).
    name = handle.name if isinstance(getattr(handle, "name", None), str) else "image.tif"
    named = tifffile.FileHandle(handle, mode="wb", name=name)
    tifffile.imwrite(named, pixels, photometric="rgb", compression="zlib", compressionargs={"level": 6},
                     predictor=True, rowsperstrip=min(rows, height), resolution=(dpi or 72, dpi or 72),
                     resolutionunit="INCH", description=description or None, software=software, iccprofile=icc,
                     metadata=None, bigtiff=needs_bigtiff(pixels.nbytes))
