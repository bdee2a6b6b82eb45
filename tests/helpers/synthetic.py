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


def tiles_for(extractor, width: int, height: int, tile: int | None) -> list:
    """The windows a stage plan would give an image of this size on ``extractor``'s layers."""
    from hires_nst.config.catalog import BLOCK_SIZES
    from hires_nst.core.tiles import TileGrid

    grid = TileGrid.for_layers(extractor.layers, tile, block_sizes=getattr(extractor, "block_sizes", BLOCK_SIZES))
    return grid.tiles(width, height)


def batch_folder(root: Path, preset: str) -> Path:
    """``root/in/{a,b,s}.png`` (two photos, one painting, 40-48 px) and ``root/tiny.toml`` holding ``preset``."""
    (root / "in").mkdir()
    write_image(root / "in" / "a.png", 48, 40, 0)
    write_image(root / "in" / "b.png", 40, 48, 1)
    write_image(root / "in" / "s.png", 48, 48, 2)
    (root / "tiny.toml").write_text(preset)
    return root
