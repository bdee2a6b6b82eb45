"""16-bit RGB PNG and TIFF encoders, written with zlib and struct.

Pillow has no 48-bit colour mode, so it cannot write these; the renderer's result is float, and a
print deserves more than 8 bits of it (smooth skies band at 8 bits after a printer's curves).
Both writers stream row blocks into an open binary file and carry the same metadata as the 8-bit
path: resolution in dots per inch, an ICC profile, and a text description (the settings).
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

SHORT, LONG, RATIONAL, ASCII, UNDEFINED = 3, 4, 5, 2, 7
_FORMATS = {SHORT: "H", LONG: "I", RATIONAL: "I"}  # a rational is two LONGs: numerator, denominator


def _tiff_strips(pixels: np.ndarray, rows: int) -> list[bytes]:
    """Deflate-compressed strips with horizontal differencing (TIFF predictor 2), little-endian."""
    diff = pixels.copy()
    diff[:, 1:] -= pixels[:, :-1]  # uint16 wraps modulo 65536, as the predictor expects
    little = diff.astype("<u2")
    return [zlib.compress(little[top:top + rows].tobytes(), 6) for top in range(0, pixels.shape[0], rows)]


def _entry(tag: int, kind: int, values: tuple | bytes, heap: bytearray, heap_offset: int) -> bytes:
    """One 12-byte IFD entry; values longer than 4 bytes go to ``heap`` (placed at ``heap_offset``)."""
    if kind in (ASCII, UNDEFINED):
        data, count = bytes(values), len(values)
    else:
        count = len(values) // 2 if kind == RATIONAL else len(values)
        data = struct.pack("<" + _FORMATS[kind] * len(values), *values)
    if len(data) <= 4:
        inline = data.ljust(4, b"\x00")
    else:
        inline = struct.pack("<I", heap_offset + len(heap))
        heap.extend(data + (b"\x00" if len(data) % 2 else b""))  # values start on word boundaries
    return struct.pack("<HHI", tag, kind, count) + inline


def write_tiff16(handle: BinaryIO, pixels: np.ndarray, *, dpi: int | None = None, icc: bytes | None = None,
                 description: str | None = None, software: str = "hires-nst") -> None:
    """Write (H, W, 3) uint16 as a baseline 16-bit RGB TIFF (deflate, predictor 2, little-endian)."""
    height, width = pixels.shape[:2]
    rows = _rows_per_block(width)
    strips = _tiff_strips(pixels, rows)
    offsets, position = [], 8
    for strip in strips:
        offsets.append(position)
        position += len(strip)
    if position > 2**32 - 2**24:
        raise ValueError("a classic TIFF holds at most 4 GB; write a PNG instead")
    resolution = (dpi or 72, 1)
    tags: list[tuple[int, int, tuple | bytes]] = [
        (256, LONG, (width,)), (257, LONG, (height,)), (258, SHORT, (16, 16, 16)), (259, SHORT, (8,)),
        (262, SHORT, (2,)), (270, ASCII, (description or "").encode("ascii", "replace") + b"\x00"),
        (273, LONG, tuple(offsets)), (277, SHORT, (3,)), (278, LONG, (rows,)),
        (279, LONG, tuple(len(s) for s in strips)), (282, RATIONAL, resolution), (283, RATIONAL, resolution),
        (284, SHORT, (1,)), (296, SHORT, (2,)), (305, ASCII, software.encode("ascii", "replace") + b"\x00"),
        (317, SHORT, (2,)),
    ]
    if icc:
        tags.append((34675, UNDEFINED, icc))
    ifd_offset = position + position % 2
    heap_offset = ifd_offset + 2 + 12 * len(tags) + 4
    heap = bytearray()
    entries = b"".join(_entry(tag, kind, values, heap, heap_offset) for tag, kind, values in tags)
    handle.write(b"II" + struct.pack("<HI", 42, ifd_offset))
    for strip in strips:
        handle.write(strip)
    handle.write(b"\x00" * (ifd_offset - position))
    handle.write(struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0) + bytes(heap))
