"""Small pictures of a render's inputs for the live page: the photo and the painting(s).

A person opening the page wants to see what is being combined, not download a 40 MP scan once a
second. Each input is read once (``io.images``, so EXIF orientation, ICC profiles and 16-bit files
look as the render sees them), shrunk to at most ``THUMB_SIZE`` px, encoded as JPEG and kept in
memory. Only the files the render was given are served, by their index: the URL never names a path.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from pathlib import Path

from hires_nst.errors import HiresNSTError

THUMB_SIZE = 256  # long side, px
THUMB_MAX_PIXELS = 250_000_000  # io.images.DEFAULT_MAX_INPUT_PIXELS: a larger input gets no thumbnail


def thumbnail(path: Path, size: int = THUMB_SIZE) -> bytes:
    """``path`` as a JPEG whose long side is at most ``size`` px (never enlarged).

    Raises ``InputError`` when the file cannot be read (the render says why; the page shows no picture).
    """
    import numpy as np  # here: ``watch`` and the page's other routes start without numpy, cv2 and torch
    from PIL import Image

    from hires_nst.io import images

    array = images.load_image(path, "input", max_pixels=THUMB_MAX_PIXELS)  # (H, W, 3) float32 in [0, 1]
    height, width = array.shape[:2]
    scale = min(1.0, size / max(width, height))
    small = images.resize(array, max(1, round(width * scale)), max(1, round(height * scale)))
    buffer = io.BytesIO()
    Image.fromarray(np.round(small * 255).astype(np.uint8)).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


class Thumbnails:
    """The thumbnails of ``paths``, each made on its first request and then kept (a failure too:
    an unreadable input is not read again every second). One is made at a time, so a page opened
    in two tabs does not decode the same photo twice."""

    def __init__(self, paths: Sequence[Path], size: int = THUMB_SIZE) -> None:
        self.paths, self.size = tuple(paths), size
        self._made: dict[int, bytes | None] = {}
        self._lock = threading.Lock()

    def get(self, index: int) -> bytes | None:
        """Input ``index`` (0: the photo, then the paintings) as JPEG; None when out of range or unreadable."""
        if not 0 <= index < len(self.paths):
            return None
        with self._lock:
            if index not in self._made:
                self._made[index] = self._make(self.paths[index])
            return self._made[index]

    def _make(self, path: Path) -> bytes | None:
        try:
            return thumbnail(path, self.size)
        except (HiresNSTError, OSError, ValueError, MemoryError):
            return None
