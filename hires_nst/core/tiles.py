"""The tile plan of exact tiled optimisation (pure arithmetic on sizes; tiling.py runs it).

A plan cuts an image into cores that cover it exactly once, each inside a window that reaches
``halo`` pixels further (clipped at the image border); core offsets are multiples of ``align`` so
that every window's pooling grid lines up with the untiled network's. ``required_halo`` derives
the halo that makes a set of VGG layers exact; ``TileGrid.for_layers`` is the one place a render's
halo and alignment are decided, and ``TileGrid.tiles`` lays out the windows a stage runs on (the
render plan's, ``engine.plan``). ``plan_tiles`` also prices candidate tilings (``memmodel``,
``bandplan``), and several ranks share a stage in ``bands`` (each rank's band, tiled inside it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import Tensor

from hires_nst.config.catalog import BLOCK_SIZES, POOLS_BEFORE, canonical_layer
from hires_nst.errors import ConfigError


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

    def shifted(self, dx: int, dy: int) -> Rect:
        return Rect(self.left + dx, self.top + dy, self.right + dx, self.bottom + dy)

    def at_depth(self, depth: int) -> Rect:
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
    return [(start, stop, max(0, start - halo), min(length, stop + halo))
            for start, stop in zip(starts, stops, strict=True)]


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
    return int(2 ** max(POOLS_BEFORE[canonical_layer(n)] for n in layers))


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
                   block_sizes: Sequence[int] = BLOCK_SIZES) -> TileGrid:
        """The grid that keeps ``layers`` exact: ``halo`` if given (> 0), else ``required_halo``."""
        layers = list(layers)
        return cls(tile, halo or required_halo(layers, block_sizes), align_for(layers))

    def tiles(self, width: int, height: int) -> list[Tile]:
        """The windows of a ``width`` x ``height`` image: ``plan_tiles``, or one window when untiled."""
        if self.tile is None:
            whole = Rect(0, 0, width, height)
            return [Tile(whole, whole)]
        return plan_tiles(width, height, self.tile, self.halo, self.align)

