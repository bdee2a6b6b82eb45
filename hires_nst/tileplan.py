"""The tile plan of exact tiled optimisation (pure arithmetic on sizes; tiling.py runs it).

A plan cuts an image into cores that cover it exactly once, each inside a window that reaches
``halo`` pixels further (clipped at the image border); core offsets are multiples of ``align`` so
that every window's pooling grid lines up with the untiled network's. ``required_halo`` derives
the halo that makes a set of VGG layers exact; ``TileGrid.for_layers`` is the one place a render's
halo and alignment are decided, and ``TileGrid.tiles`` the one tile planning of a stage's images.
With several devices, ``plan_bands`` gives each its band of the image, tiled with its own tile size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from torch import Tensor

from hires_nst.errors import ConfigError
from hires_nst.catalog import BLOCK_SIZES, POOLS_BEFORE, canonical_layer


@dataclass(frozen=True)
class Rect:
    """A pixel rectangle ``[left, right) x [top, bottom)``."""

    left: int
    top: int
    right: int
    bottom: int

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    def shifted(self, dx: int, dy: int) -> "Rect":
        return Rect(self.left + dx, self.top + dy, self.right + dx, self.bottom + dy)

    def at_depth(self, depth: int) -> "Rect":
        """This rectangle on a feature map after ``depth`` 2x2 poolings.

        Exact for an aligned left/top; a right/bottom edge that is the image border floors exactly
        as the pooling does (``floor(floor(W / 2) / 2) == W >> 2``).
        """
        return Rect(self.left >> depth, self.top >> depth, self.right >> depth, self.bottom >> depth)

    def crop(self, tensor: Tensor) -> Tensor:
        """``tensor[..., top:bottom, left:right]``: a view, so gradients flow back into ``tensor``."""
        return tensor[..., self.top:self.bottom, self.left:self.right]


@dataclass(frozen=True)
class Tile:
    """One unit of work: the ``core`` it is responsible for, and the ``window`` it runs VGG on."""

    core: Rect
    window: Rect  # core + halo, clipped to the image

    def core_in_window(self, depth: int) -> tuple[slice, slice]:
        """Row and column slices of the core inside the window's feature map at ``depth``."""
        core, window = self.core.at_depth(depth), self.window.at_depth(depth)
        return (slice(core.top - window.top, core.bottom - window.top),
                slice(core.left - window.left, core.right - window.left))


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _spans(length: int, size: int, halo: int, align: int) -> list[tuple[int, int, int, int]]:
    """``(start, stop, window start, window stop)`` of the cores along one axis.

    Cores are ``size`` long; the last ends at ``length``, and absorbs a remainder shorter than
    ``align``: such a sliver would cost a whole window for a few pixels and, with a small halo,
    could be too small to survive VGG's poolings.
    """
    starts = list(range(0, length, size))
    if len(starts) > 1 and length - starts[-1] < align:
        starts.pop()
    stops = starts[1:] + [length]
    return [(start, stop, max(0, start - halo), min(length, stop + halo)) for start, stop in zip(starts, stops)]


def plan_tiles(width: int, height: int, tile_size: int, halo: int, align: int = 16) -> list[Tile]:
    """Cover a ``width`` x ``height`` image with cores, each exactly once, row by row.

    ``tile_size`` is the core side, rounded down to a multiple of ``align`` (at least ``align``;
    the last core of a row or column may be up to ``align - 1`` px longer, see ``_spans``);
    ``halo`` is rounded up to a multiple of ``align`` so that clipped and unclipped window edges
    stay on the pooling grid. A tile at least as large as the image gives one tile.
    """
    if width < 1 or height < 1:
        raise ConfigError(f"image size must be positive, got {width}x{height}")
    if align < 1 or align & (align - 1):
        raise ConfigError(f"tile alignment must be a power of two, got {align}")
    if tile_size < 1 or halo < 0:
        raise ConfigError(f"tile size must be >= 1 and halo >= 0, got tile size {tile_size}, halo {halo}")
    size = max(align, tile_size // align * align)
    halo = round_up(halo, align)
    return [Tile(Rect(x0, y0, x1, y1), Rect(wx0, wy0, wx1, wy1))
            for y0, y1, wy0, wy1 in _spans(height, size, halo, align)
            for x0, x1, wx0, wx1 in _spans(width, size, halo, align)]


def align_for(layers: Iterable[str]) -> int:
    """Core offsets must be multiples of this: 2**(poolings before the deepest layer)."""
    return 2 ** max(POOLS_BEFORE[canonical_layer(n)] for n in layers)


def required_halo(layers: Iterable[str], block_sizes: Sequence[int] = BLOCK_SIZES) -> int:
    """The smallest halo (a multiple of ``align_for(layers)``) that makes ``layers`` exact.

    Walks the VGG body (``block_sizes``: convolutions per block, VGG19's by default): each 3x3 conv
    (zero padded) spoils one more feature pixel next to a window edge at its own resolution; a 2x2
    pooling on the aligned grid keeps ``ceil(b / 2)`` of ``b`` spoiled pixels. A layer at depth ``k``
    with ``b`` spoiled pixels needs ``b * 2**k`` input pixels of halo: 80 px for conv5_1 (the
    receptive-field radius is ~70 px; pooling rounds it up).
    """
    wanted = {canonical_layer(n) for n in layers}
    if not wanted:
        raise ConfigError("no feature layers requested")
    spoiled, need = 0, 0
    for block, convs in enumerate(block_sizes, 1):
        if block > 1:
            spoiled = math.ceil(spoiled / 2)
        for conv in range(1, convs + 1):
            spoiled += 1
            if f"conv{block}_{conv}" in wanted:
                need = max(need, spoiled * 2 ** (block - 1))
    return round_up(need, align_for(wanted))


@dataclass(frozen=True)
class TileGrid:
    """How the images of one stage are cut: core side (None: not at all), halo and alignment."""

    tile: int | None
    halo: int
    align: int

    @classmethod
    def for_layers(cls, layers: Iterable[str], tile: int | None, halo: int = 0,
                   block_sizes: Sequence[int] = BLOCK_SIZES) -> "TileGrid":
        """The grid that keeps ``layers`` exact: ``halo`` if given (> 0), else ``required_halo``."""
        layers = list(layers)
        return cls(tile, halo or required_halo(layers, block_sizes), align_for(layers))

    def tiles(self, width: int, height: int) -> list[Tile]:
        """The windows of a ``width`` x ``height`` image: ``plan_tiles``, or one window when untiled."""
        if self.tile is None:
            whole = Rect(0, 0, width, height)
            return [Tile(whole, whole)]
        return plan_tiles(width, height, self.tile, self.halo, self.align)


# --------------------------------------------------------------------------- several devices

# Cost of the backward pass to the input relative to the forward pass (frozen weights, so no
# weight gradients). Measured on the dev CPU: 1.5-2.1x (benchmarks/speed.py); GPUs are similar.
BACKWARD_COST = 2.0
# Spread an otherwise untiled stage only when the cost model promises at least this speed-up:
# the copies and reductions between devices are not in the model.
SPREAD_GAIN = 1.1


@dataclass(frozen=True)
class Band:
    """One device's share of the image: the cores it owns, and its tiles in image coordinates."""

    rect: Rect
    tiles: tuple[Tile, ...]

    @property
    def bounds(self) -> Rect:
        """The pixels this device reads and writes: the union of its windows."""
        windows = [t.window for t in self.tiles]
        return Rect(min(w.left for w in windows), min(w.top for w in windows),
                    max(w.right for w in windows), max(w.bottom for w in windows))

    @property
    def window_pixels(self) -> int:
        return sum(t.window.width * t.window.height for t in self.tiles)


def _cuts(length: int, parts: int, align: int) -> list[int]:
    """``parts + 1`` band edges on the ``align`` grid (the last at ``length``), each band >= ``align``."""
    parts = max(1, min(parts, length // align))
    return [(k * length // parts) // align * align for k in range(parts)] + [length]


def plan_bands(width: int, height: int, tile_sizes: Sequence[int | None], halo: int, align: int = 16) -> list[Band]:
    """One band per entry of ``tile_sizes`` (fewer if the image is too small), cut across the long side.

    Band ``k`` is covered by ``plan_tiles`` with ``tile_sizes[k]`` (None: one window for the whole
    band); each window is its core plus ``halo`` (rounded up to ``align``) clipped to the *image*,
    not the band, so every core sees the same context as in the single-device plan.
    """
    halo = round_up(halo, align)
    across_width = width >= height
    cuts = _cuts(width if across_width else height, len(tile_sizes), align)
    bands = []
    for k, (start, stop) in enumerate(zip(cuts, cuts[1:])):
        rect = Rect(start, 0, stop, height) if across_width else Rect(0, start, width, stop)
        size = tile_sizes[k] or max(rect.width, rect.height)
        tiles = []
        for inner in plan_tiles(rect.width, rect.height, size, halo, align):
            core = inner.core.shifted(rect.left, rect.top)
            window = Rect(max(0, core.left - halo), max(0, core.top - halo),
                          min(width, core.right + halo), min(height, core.bottom + halo))
            tiles.append(Tile(core, window))
        bands.append(Band(rect, tuple(tiles)))
    return bands


def spread_pays(width: int, height: int, devices: int, halo: int, align: int = 16) -> bool:
    """Whether an image that fits one device untiled is faster as one window per device.

    Untiled: one forward and one backward over the image. Spread: every device runs two forwards
    (the tiled passes) and one backward over its band plus halos, all devices at once. Small
    images lose: at 256 px on two devices the halo makes each band 80% of the image.
    """
    bands = plan_bands(width, height, [None] * devices, halo, align)
    if len(bands) < 2:
        return False
    spread = max(b.window_pixels for b in bands) * (2 + BACKWARD_COST)
    return spread * SPREAD_GAIN < width * height * (1 + BACKWARD_COST)
