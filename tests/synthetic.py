"""Synthetic test images: a smooth gradient with some noise, enough texture for VGG, tiny enough for a CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, width: int = 48, height: int = 40, seed: int = 0) -> Path:
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).random((height, width, 3))
    pixels = np.stack([x / width, y / height, (x + y) / (width + height)], axis=2) * 0.7 + noise * 0.3
    Image.fromarray((pixels * 255).astype(np.uint8)).save(path)
    return path
