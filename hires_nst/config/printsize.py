"""Print sizes: paper names and ``WxH`` sizes in mm/cm/in turned into pixels at a DPI. Pure arithmetic.

Two ways for a photo to meet the paper (``--fit``):

* ``fit``: the whole photo lies inside the paper; the side that limits touches the paper's edge,
  the other side is shorter (white margin when printed). Nothing of the photo is lost.
* ``crop``: the output is exactly the paper's pixel size; the photo is centre-cropped to the paper's
  aspect ratio *before* rendering, so no pixels are spent on parts that get trimmed.

``orientation`` ``auto`` turns the paper like the photo (landscape photo -> landscape paper).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hires_nst.errors import ConfigError

MM_PER_INCH = 25.4
# (short side, long side) in millimetres.
PAPER_SIZES_MM: dict[str, tuple[float, float]] = {
    "A0": (841, 1189), "A1": (594, 841), "A2": (420, 594), "A3": (297, 420), "A4": (210, 297),
    "A5": (148, 210), "A6": (105, 148),
    "LETTER": (8.5 * MM_PER_INCH, 11 * MM_PER_INCH), "LEGAL": (8.5 * MM_PER_INCH, 14 * MM_PER_INCH),
    "TABLOID": (11 * MM_PER_INCH, 17 * MM_PER_INCH),
}
UNITS_MM = {"mm": 1.0, "cm": 10.0, "in": MM_PER_INCH}
FITS = ("fit", "crop")
MAX_DPI = 10_000  # config's range of --dpi
ORIENTATIONS = ("auto", "portrait", "landscape")
_CUSTOM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[x×]\s*(\d+(?:\.\d+)?)\s*(mm|cm|in)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class PrintPlan:
    """What a print size means for one photo: the output size, and the crop of the photo if any."""

    width: int
    height: int
    crop: tuple[int, int, int, int] | None  # (left, top, right, bottom) in content pixels


def parse_print_size(text: str) -> tuple[float, float]:
    """``A4``, ``letter``, ``300x400mm``, ``8x10in`` -> (width, height) in mm, as written."""
    name = text.strip().upper()
    if name in PAPER_SIZES_MM:
        return PAPER_SIZES_MM[name]
    match = _CUSTOM.match(text)
    if not match:
        names = ", ".join(n if n.startswith("A") else n.lower() for n in PAPER_SIZES_MM)
        raise ConfigError(f"--print-size {text!r}: use a paper name ({names}) or WxH with a unit, "
                          "e.g. 300x400mm, 30x40cm, 8x10in")
    unit = UNITS_MM[match.group(3).lower()]
    width, height = float(match.group(1)) * unit, float(match.group(2)) * unit
    if width <= 0 or height <= 0:
        raise ConfigError(f"--print-size {text!r}: both sides must be positive")
    return width, height


def paper_pixels(text: str, dpi: int) -> tuple[int, int]:
    """The paper's (width, height) in pixels as written (A-series portrait): A4 at 300 dpi = 2480x3508."""
    width_mm, height_mm = parse_print_size(text)
    width, height = round(width_mm / MM_PER_INCH * dpi), round(height_mm / MM_PER_INCH * dpi)
    if min(width, height) < 16:
        raise ConfigError(f"--print-size {text} at --dpi {dpi} is only {width}x{height} pixels; "
                          "it needs at least 16 on each side")
    return width, height


def oriented(width: int, height: int, orientation: str, content_width: int, content_height: int) -> tuple[int, int]:
    """Turn the paper: portrait (tall), landscape (wide), or auto (like the photo; square -> portrait)."""
    if orientation == "auto":
        orientation = "landscape" if content_width > content_height else "portrait"
    short, long = sorted((width, height))
    return (long, short) if orientation == "landscape" else (short, long)


def centre_crop(content_width: int, content_height: int, width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred box of the content with the aspect ratio ``width``:``height``."""
    if content_width * height > content_height * width:  # content wider than the paper
        crop_width = max(1, round(content_height * width / height))
        left = (content_width - crop_width) // 2
        return left, 0, left + crop_width, content_height
    crop_height = max(1, round(content_width * height / width))
    top = (content_height - crop_height) // 2
    return 0, top, content_width, top + crop_height


def fit_inside(content_width: int, content_height: int, width: int, height: int) -> tuple[int, int]:
    """The content's aspect ratio scaled to touch the paper's limiting side, never past the other."""
    scale = min(width / content_width, height / content_height)
    return (min(width, max(1, round(content_width * scale))), min(height, max(1, round(content_height * scale))))


def print_plan(text: str, dpi: int, fit: str, orientation: str, content_width: int, content_height: int) -> PrintPlan:
    """The output size and crop for a ``content_width`` x ``content_height`` photo on this paper."""
    width, height = oriented(*paper_pixels(text, dpi), orientation, content_width, content_height)
    if fit == "crop":
        return PrintPlan(width, height, centre_crop(content_width, content_height, width, height))
    return PrintPlan(*fit_inside(content_width, content_height, width, height), None)


def describe(text: str, dpi: int) -> str:
    """``A4 at 300 dpi: 2480x3508 px`` (the paper as written, portrait for named sizes)."""
    width, height = paper_pixels(text, dpi)
    return f"{text} at {dpi} dpi: {width}x{height} px"
