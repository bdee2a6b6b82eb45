"""Contact sheets: images laid out in a grid, each with a caption, as one image."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hires_nst import images

GAP = 8
CAPTION = 22
BACKGROUND = (255, 255, 255)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def grid_sheet(cells: Sequence[Sequence[np.ndarray]], captions: Sequence[Sequence[str]], cell_height: int = 256) -> np.ndarray:
    """Lay out ``cells[row][col]`` (H, W, 3 arrays) at a common height with a caption under each."""
    scaled = [[images.resize(c, max(1, round(c.shape[1] * cell_height / c.shape[0])), cell_height) for c in row]
              for row in cells]
    width = max(sum(c.shape[1] for c in row) + GAP * (len(row) + 1) for row in scaled)
    height = len(scaled) * (cell_height + CAPTION + GAP) + GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw, font = ImageDraw.Draw(sheet), _font()
    y = GAP
    for row, row_captions in zip(scaled, captions):
        x = GAP
        for cell, caption in zip(row, row_captions):
            sheet.paste(Image.fromarray(np.round(cell * 255).astype(np.uint8)), (x, y))
            draw.text((x, y + cell_height + 3), caption, fill=(0, 0, 0), font=font)
            x += cell.shape[1] + GAP
        y += cell_height + CAPTION + GAP
    return np.asarray(sheet, dtype=np.float32) / 255.0


def contact_sheet(stage_images: Sequence[np.ndarray], captions: Sequence[str], cell_height: int = 256) -> np.ndarray:
    """One row: every stage side by side, each captioned (e.g. with its size)."""
    height = min(cell_height, max(i.shape[0] for i in stage_images))
    return grid_sheet([list(stage_images)], [list(captions)], height)
