"""How one stage's image is shared out between ranks (pure arithmetic on sizes).

Each rank owns a rectangle of cores (a *band*; a grid cell when that beats strips) and reads
``bounds``: the band grown by the halo, clipped to the image. Everything a rank computes comes
from its bounds, and its gradient covers exactly its bounds, so the others know without asking
where each rank's gradient lands.

Why a grid and why balanced windows: the halo is pure overhead (80 px of context per side for
conv5_1), and a rank's time is its *window*, not its core. Eight strips of a 4096 px square are
512 px cores read through 672 px windows (76% useful); a 4 x 2 grid whose cuts leave every window
the same size reads 1144 x 2128 px windows for 512 x 4096 px of cores (86% useful). Cuts stay on
the pooling grid (``align``), as in ``tiles``, so the result is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from hires_nst.core.tiles import Rect, Tile, plan_tiles, round_up


@dataclass(frozen=True)
class Band:
    """One rank's share: the cores it owns (``rect``) and the pixels its windows read (``bounds``)."""

    rect: Rect
    bounds: Rect

    @property
    def window_pixels(self) -> int:
        return self.bounds.width * self.bounds.height


@dataclass(frozen=True)
class BandPlan:
    """A shared stage: every rank's band (a rank past the end has none) and this rank's tile side."""

    bands: tuple[Band, ...]
    tile: int | None  # this rank's tile side in its band; None: the band is one window
    halo: int
    align: int

    def band(self, rank: int) -> Band | None:
        return self.bands[rank] if rank < len(self.bands) else None


def balanced_cuts(length: int, parts: int, halo: int, align: int) -> list[int]:
    """``parts + 1`` edges on the ``align`` grid from 0 to ``length`` whose windows are about equal.

    An outer part's window is its core plus one halo, an inner part's its core plus two, so
    inner cores are ``halo`` shorter. Fewer parts when an inner core would be shorter than
    ``align`` (the halo would be all of its window).
    """
    while parts > 1:
        window = (length + 2 * halo * (parts - 1)) / parts
        inner = window - 2 * halo
        if inner >= align and window - halo >= align:
            break
        parts -= 1
    if parts <= 1:
        return [0, length]
    cuts = [0]
    for k in range(1, parts):
        ideal = k * window - (2 * k - 1) * halo  # end of core k - 1
        cut = max(cuts[-1] + align, round(ideal / align) * align)
        cuts.append(min(cut, length - align * (parts - k)))
    return cuts + [length]


def _grid(width: int, height: int, columns: int, rows: int, halo: int, align: int) -> list[Band]:
    xs, ys = balanced_cuts(width, columns, halo, align), balanced_cuts(height, rows, halo, align)
    bands = []
    for top, bottom in pairwise(ys):
        for left, right in pairwise(xs):
            rect = Rect(left, top, right, bottom)
            bounds = Rect(max(0, left - halo), max(0, top - halo), min(width, right + halo), min(height, bottom + halo))
            bands.append(Band(rect, bounds))
    return bands


def plan_bands(width: int, height: int, ranks: int, halo: int, align: int = 16) -> list[Band]:
    """At most ``ranks`` bands covering the image once: of the grids ``c x r`` with ``c * r == ranks``
    (fewer cells where the image is too small), the one whose largest window is smallest.

    ``halo`` is rounded up to ``align`` as in ``plan_tiles``. Ties go to strips across the long
    side (fewer, longer seams). A rank past the end of the list has no band (it idles that stage).
    """
    halo = round_up(halo, align)
    best: list[Band] = []
    best_key: tuple[int, int, int] | None = None
    for columns in range(1, ranks + 1):
        if ranks % columns:
            continue
        bands = _grid(width, height, columns, ranks // columns, halo, align)
        key = (-len(bands), max(b.window_pixels for b in bands), min(columns, ranks // columns))
        if best_key is None or key < best_key:
            best, best_key = bands, key
    return best


def band_tiles(band: Band, width: int, height: int, tile_size: int | None, halo: int, align: int = 16) -> list[Tile]:
    """The band's tiles in *bounds* coordinates: cores covering ``band.rect`` once, each window its
    core plus ``halo`` clipped to the image (not the band), so every core sees the context it has
    in the single-device plan. ``tile_size`` None: one window, the bounds."""
    halo = round_up(halo, align)
    rect, bounds = band.rect, band.bounds
    size = tile_size or max(rect.width, rect.height)
    tiles = []
    for inner in plan_tiles(rect.width, rect.height, size, halo, align):
        core = inner.core.shifted(rect.left, rect.top)
        window = Rect(max(0, core.left - halo), max(0, core.top - halo),
                      min(width, core.right + halo), min(height, core.bottom + halo))
        tiles.append(Tile(core.shifted(-bounds.left, -bounds.top), window.shifted(-bounds.left, -bounds.top)))
    return tiles
