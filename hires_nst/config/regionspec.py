"""What ``--mask`` and ``--region`` say, as plain data: parsed and checked without the engine.

Two ways to give regions (Gatys et al. 2017, spatial control):

* ``--mask MASK.png`` with ``--region "COLOUR=STYLE[:WEIGHT]"`` repeated: one region per colour of
  the mask. COLOUR is a name (``white``, ``skyblue``: Pillow's CSS names), ``#rrggbb`` or a grey
  level 0-255;
* ``--region "MASK.png:STYLE[:WEIGHT]"`` repeated, without ``--mask``: one grey-level mask per
  region, its levels the region's weights per pixel (white 1, black 0), so soft edges are weights.

STYLE names one of the render's paintings (PAINTING arguments, a batch job's ``styles``): by its
path as given, its file name, its stem, or its 1-based position; ``photo`` or ``none`` keeps the
photo there (content loss only). Positions in no styled region keep the photo too. WEIGHT
(default 1) multiplies the region's share of the style term.

No torch or numpy here: ``config.validate`` checks the syntax; ``regions`` reads the files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hires_nst.errors import ConfigError

UNSTYLED = ("photo", "none")

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class RegionSpec:
    """One ``--region``: where (a colour of ``--mask``, or its own mask file), which style, how much."""

    style: str | None  # as written; None: keep the photo (content only)
    weight: float = 1.0
    colour: Colour | None = None  # with --mask
    mask: str = ""  # without --mask: this region's grey-level mask file
    text: str = ""  # the --region value, for messages


def parse_colour(text: str) -> Colour:
    """``white``, ``#ffffff``, ``#fff`` or a grey level ``0``-``255`` -> (r, g, b)."""
    value = text.strip()
    if value.isdigit():
        level = int(value)
        if level > 255:
            raise ConfigError(f"--region colour {text!r}: a grey level is 0-255")
        return (level, level, level)
    from PIL import ImageColor  # here: --help needs no Pillow

    try:
        rgb = ImageColor.getrgb(value)
    except ValueError:
        raise ConfigError(f"--region colour {text!r} is not a colour: give a name (white, skyblue), "
                          "#rrggbb or a grey level 0-255") from None
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))


def _style_and_weight(text: str, spec: str) -> tuple[str | None, float]:
    """``STYLE`` or ``STYLE:WEIGHT`` -> (style or None for the photo, weight)."""
    style, weight = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            pass  # a colon inside the style's path
        else:
            style = head
    if not math.isfinite(weight) or weight < 0:
        raise ConfigError(f"--region {spec!r}: the weight must be a finite number >= 0, got {tail!r}")
    style = style.strip()
    if not style:
        raise ConfigError(f"--region {spec!r} names no style (a painting, or photo to keep the photo)")
    return (None if style.lower() in UNSTYLED else style), weight


def parse_regions(mask: str, regions: Sequence[str]) -> list[RegionSpec]:
    """Every ``--region`` parsed; ConfigError naming the one that is malformed."""
    if mask and not regions:
        raise ConfigError(f"--mask {mask} needs --region COLOUR=STYLE for each of its colours")
    specs = []
    for text in regions:
        if mask:
            colour, sep, rest = text.partition("=")
            if not sep:
                raise ConfigError(f"--region {text!r}: with --mask, write COLOUR=STYLE[:WEIGHT], e.g. white=starry.jpg")
            style, weight = _style_and_weight(rest, text)
            specs.append(RegionSpec(style, weight, colour=parse_colour(colour), text=text))
        else:
            path, sep, rest = text.partition(":")
            if not sep or not path.strip() or "=" in path:
                raise ConfigError(f"--region {text!r}: write MASK.png:STYLE[:WEIGHT] (one grey-level mask per region), "
                                  "or give --mask and COLOUR=STYLE")
            style, weight = _style_and_weight(rest, text)
            specs.append(RegionSpec(style, weight, mask=path.strip(), text=text))
    colours = [s.colour for s in specs if s.colour is not None]
    twice = sorted({c for c in colours if colours.count(c) > 1})
    if twice:
        raise ConfigError(f"--region names the colour {', '.join(hex_colour(c) for c in twice)} more than once")
    return specs


def hex_colour(colour: Colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*colour)


def style_index(spec: RegionSpec, paintings: Sequence[Path]) -> int:
    """The painting ``spec.style`` names: its path as given, file name, stem, or 1-based position."""
    assert spec.style is not None
    name = spec.style
    if name.isdigit() and 1 <= int(name) <= len(paintings):
        return int(name) - 1
    for key in (lambda p: str(p), lambda p: p.name, lambda p: p.stem):
        found = [i for i, p in enumerate(paintings) if key(p) == name]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ConfigError(f"--region {spec.text!r}: {name!r} names {len(found)} paintings; give its position "
                              f"(1-{len(paintings)}) instead")
    listed = ", ".join(f"{i + 1}: {p}" for i, p in enumerate(paintings)) or "none given"
    raise ConfigError(f"--region {spec.text!r}: {name!r} is none of the paintings ({listed}); give the style image "
                      "as a PAINTING too, or photo to keep the photo")


def mask_files(mask: str, regions: Sequence[str]) -> dict[str, Path]:
    """The mask files the regions read, by what they are (for fingerprints and messages)."""
    if mask:
        return {"--mask image": Path(mask)}
    return {f"--region {i + 1} mask": Path(s.mask) for i, s in enumerate(parse_regions(mask, regions))}
