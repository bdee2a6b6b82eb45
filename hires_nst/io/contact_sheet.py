"""Contact sheets: images laid out in a grid, each with a caption, as one image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hires_nst.io import images

GAP = 8
CAPTION = 22
BACKGROUND = (255, 255, 255)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=14)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def grid_sheet(cells: Sequence[Sequence[np.ndarray]], captions: Sequence[Sequence[str]],
               cell_height: int = 256) -> np.ndarray:
    """Lay out ``cells[row][col]`` (H, W, 3 arrays) at a common height with a caption under each."""
    scaled = [[images.resize(c, max(1, round(c.shape[1] * cell_height / c.shape[0])), cell_height) for c in row]
              for row in cells]
    width = max(sum(c.shape[1] for c in row) + GAP * (len(row) + 1) for row in scaled)
    height = len(scaled) * (cell_height + CAPTION + GAP) + GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw, font = ImageDraw.Draw(sheet), _font()
    y = GAP
    for row, row_captions in zip(scaled, captions, strict=True):
        x = GAP
        for cell, caption in zip(row, row_captions, strict=True):
            sheet.paste(Image.fromarray(np.round(cell * 255).astype(np.uint8)), (x, y))
            draw.text((x, y + cell_height + 3), caption, fill=(0, 0, 0), font=font)
            x += cell.shape[1] + GAP
        y += cell_height + CAPTION + GAP
    return np.asarray(sheet, dtype=np.float32) / 255.0


def contact_sheet(stage_images: Sequence[np.ndarray], captions: Sequence[str], cell_height: int = 256) -> np.ndarray:
    """One row: every stage side by side, each captioned (e.g. with its size)."""
    height = min(cell_height, max(i.shape[0] for i in stage_images))
    return grid_sheet([list(stage_images)], [list(captions)], height)


def labelled_grid(cells: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str], col_labels: Sequence[str],
                  cell_height: int = 256) -> np.ndarray:
    """A table of images: ``cells[row][col]`` at a common height, column labels on top, row labels
    on the left; a column is as wide as its widest image or label."""
    scaled = [[images.resize(c, max(1, round(c.shape[1] * cell_height / c.shape[0])), cell_height) for c in row]
              for row in cells]
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = _font()
    label_width = max(round(probe.textlength(label, font=font)) for label in row_labels) + GAP
    widths = [max([round(probe.textlength(label, font=font))] + [row[col].shape[1] for row in scaled])
              for col, label in enumerate(col_labels)]
    width = label_width + sum(widths) + GAP * (len(widths) + 1)
    height = CAPTION + len(scaled) * (cell_height + GAP) + GAP
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    x = label_width + GAP
    for col, label in enumerate(col_labels):
        draw.text((x, GAP // 2), label, fill=(0, 0, 0), font=font)
        x += widths[col] + GAP
    y = CAPTION
    for row, label in zip(scaled, row_labels, strict=True):
        draw.text((GAP // 2, y + cell_height // 2 - 7), label, fill=(0, 0, 0), font=font)
        x = label_width + GAP
        for col, cell in enumerate(row):
            sheet.paste(Image.fromarray(np.round(cell * 255).astype(np.uint8)), (x, y))
            x += widths[col] + GAP
        y += cell_height + GAP
    return np.asarray(sheet, dtype=np.float32) / 255.0
