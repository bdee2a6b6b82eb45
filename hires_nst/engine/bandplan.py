"""Whether a stage is spread over the ranks, and how: a decision from measured costs.

Spreading is not free. Each band is read through a halo, each window pays a fixed cost (a few
hundred dispatched ops: about 2 ms of host time on a GPU, launch and oneDNN set-up on a CPU), and
every iteration moves the Gram sums and the bands' gradients between ranks. So once per render the
ranks ``calibrate``: each times a small and a larger window (forward alone, forward + backward) on
its own device with the render's extractor and precision, and all time two all-gathers; the
slowest rank's numbers count. ``spread_pays`` then compares, per stage, one rank doing the whole
image (untiled if it fits, else tiled) with every rank doing its band plus the exchanges.

The decision must be the same on every rank: the inputs of the pure part are either measured on
all ranks and gathered (costs, tile sides) or the same everywhere (sizes, halo).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from hires_nst.core.bands import Band, BandPlan, band_tiles, plan_bands
from hires_nst.core.tiles import plan_tiles
from hires_nst.engine.plan import Rules, StagePlan
from hires_nst.runtime.placement import Placement
from hires_nst.runtime.ranks import World, all_gather, gather_floats

# Spread only when the model promises at least this speed-up: it leaves out the ranks' jitter.
SPREAD_MARGIN = 1.1
BYTES_PER_GRADIENT_PIXEL = 3 * 4  # float32 RGB
CALIBRATION_SIDES = {"cpu": (32, 96), "cuda": (128, 512)}
LINK_BYTES = (1024, 4 * 2**20)


@dataclass(frozen=True)
class Line:
    """``fixed + per_unit * units`` seconds."""

    fixed: float
    per_unit: float

    def __call__(self, units: float) -> float:
        return self.fixed + self.per_unit * units

    @classmethod
    def through(cls, a: tuple[float, float], b: tuple[float, float]) -> Line:
        """The line through two (units, seconds) measurements, with no negative part."""
        slope = max(0.0, (b[1] - a[1]) / (b[0] - a[0]))
        return cls(max(0.0, a[1] - slope * a[0]), slope)


@dataclass(frozen=True)
class Costs:
    """The slowest rank's seconds: one window (by its pixels) and one exchange (by bytes received)."""

    forward: Line  # pass 1 of a tiled window
    both: Line  # forward + backward of one window
    link: Line  # one collective, by the bytes each rank receives
    stats_bytes: int  # the packed pass-1 buffer

    def as_floats(self) -> list[float]:
        return [self.forward.fixed, self.forward.per_unit, self.both.fixed, self.both.per_unit,
                self.link.fixed, self.link.per_unit, float(self.stats_bytes)]

    @classmethod
    def from_floats(cls, v: Sequence[float]) -> Costs:
        return cls(Line(v[0], v[1]), Line(v[2], v[3]), Line(v[4], v[5]), int(v[6]))


def _best_of(runs: int, work: Callable[[], object], device: torch.device) -> float:
    best = float("inf")
    for _ in range(runs + 1):  # the first run warms up (cuDNN autotuning, oneDNN primitives)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        work()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - began)
    return best


def _window_costs(placement: Placement, side: int) -> tuple[float, float, dict[str, int]]:
    """(forward, forward + backward) seconds of one ``side`` px window, and each layer's channels."""
    device, extractor, precision = placement.main, placement.extractor, placement.precision
    image = torch.rand(1, 3, side, side, device=device)
    channels: dict[str, int] = {}

    def forward() -> None:
        with torch.no_grad():
            feats = precision.features(extractor, image)
        channels.update({n: f.shape[1] for n, f in feats.items()})

    def both() -> None:
        leaf = image.clone().requires_grad_(True)
        with torch.enable_grad():
            feats = precision.features(extractor, leaf)
            total = sum(f.float().square().mean() for f in feats.values())
            torch.autograd.grad(total, leaf)

    return _best_of(2, forward, device), _best_of(2, both, device), channels


def calibrate(world: World, placement: Placement, style_layers: Sequence[str]) -> Costs:
    """Measure this rank's window costs and the link; every rank gets the slowest rank's numbers."""
    small, large = CALIBRATION_SIDES.get(placement.main.type, CALIBRATION_SIDES["cuda"])
    f1, b1, channels = _window_costs(placement, small)
    f2, b2, _ = _window_costs(placement, large)
    link = []
    for size in LINK_BYTES:
        payload = torch.zeros(size // 4, device=placement.main)
        seconds = _best_of(2, functools.partial(all_gather, world, payload, "the calibration"), placement.main)
        link.append(((world.size - 1) * size, seconds))
    stats = 4 * sum(channels.get(n, 0) ** 2 for n in style_layers) + 64
    local = Costs(Line.through((small**2, f1), (large**2, f2)), Line.through((small**2, b1), (large**2, b2)),
                  Line.through(*link) if world.size > 1 else Line(0.0, 0.0), stats)
    rows = gather_floats(world, local.as_floats(), "the calibration")
    return Costs.from_floats([max(column) for column in zip(*rows, strict=True)])


def tiles_seconds(costs: Costs, windows: Sequence[int]) -> float:
    """One iteration over these windows (pixels each): one forward + backward if one, else two passes."""
    if len(windows) == 1:
        return costs.both(windows[0])
    return sum(costs.forward(p) + costs.both(p) for p in windows)


def single_seconds(costs: Costs, width: int, height: int, tile: int | None, halo: int, align: int) -> float:
    """One rank doing the whole image: untiled (``tile`` None) or tiled."""
    if tile is None:
        return costs.both(width * height)
    windows = [t.window.width * t.window.height for t in plan_tiles(width, height, tile, halo, align)]
    return tiles_seconds(costs, windows)


def spread_seconds(costs: Costs, width: int, height: int, bands: Sequence[Band], tiles: Sequence[int | None],
                   halo: int, align: int, ranks: int) -> float:
    """Every rank its band at once, then the two exchanges (ring all-reduce, all-gather of bounds)."""
    compute = max(tiles_seconds(costs, [t.window.width * t.window.height
                                        for t in band_tiles(band, width, height, tile, halo, align)])
                  for band, tile in zip(bands, tiles, strict=True))
    padded = max(b.bounds.height for b in bands) * max(b.bounds.width for b in bands)
    stats = costs.link(2 * (ranks - 1) / ranks * costs.stats_bytes)
    gradient = costs.link((ranks - 1) * padded * BYTES_PER_GRADIENT_PIXEL)
    return compute + stats + gradient


def spread_pays(costs: Costs, width: int, height: int, bands: Sequence[Band], tiles: Sequence[int | None],
                single_tile: int | None, halo: int, align: int, ranks: int) -> tuple[bool, float]:
    """(spread?, modelled speed-up) for a stage; fewer than two bands never spread."""
    if len(bands) < 2:
        return False, 1.0
    gain = (single_seconds(costs, width, height, single_tile, halo, align)
            / spread_seconds(costs, width, height, bands, tiles, halo, align, ranks))
    return gain >= SPREAD_MARGIN, gain


def plan_spread(world: World, costs: Costs, width: int, height: int, halo: int, align: int,
                single_tile: int | None, band_tile: Callable[[Band], int | None]) -> tuple[BandPlan | None, float]:
    """The stage's ``BandPlan`` if spreading pays (the same answer on every rank), and the modelled gain.

    ``band_tile(band)`` is this rank's tile side for its band, from its own memory; the ranks swap
    them (and rank 0's ``single_tile``) so that all evaluate the same model.
    """
    bands = plan_bands(width, height, world.size, halo, align)
    mine = band_tile(bands[world.rank]) if world.rank < len(bands) else None
    rows = gather_floats(world, [float(mine or 0), float(single_tile or 0)], "planning the stage")
    tiles = [int(r[0]) or None for r in rows][: len(bands)]
    single = int(rows[0][1]) or None
    pays, gain = spread_pays(costs, width, height, bands, tiles, single, halo, align, world.size)
    return (BandPlan(tuple(bands), mine, halo, align) if pays else None), gain




class Spreader:
    """A render's sharing decisions: calibrated once (at the first stage big enough for two bands),
    then one collective ``share`` per stage. Every rank makes the same calls in the same order."""

    def __init__(self, world: World, placement: Placement, rules: Rules, style_layers: Sequence[str]) -> None:
        self.world, self.placement, self.rules = world, placement, rules
        self.style_layers = list(style_layers)
        self.costs: Costs | None = None

    def share(self, plan: StagePlan) -> tuple[StagePlan, float]:
        """``plan`` with every rank's band if sharing the stage pays, else as it is (every rank then
        renders it whole: ``--tile-size off``, a backbone that cannot be tiled, too small, or slower);
        and the modelled speed-up of sharing."""
        rules, stage = self.rules, plan.stage
        if rules.grid is None or not (rules.size.auto or rules.size.pixels):
            return plan, 1.0
        halo, align = rules.grid.halo, rules.grid.align
        if len(plan_bands(stage.width, stage.height, self.world.size, halo, align)) < 2:
            return plan, 1.0
        if self.costs is None:
            self.costs = calibrate(self.world, self.placement, self.style_layers)
        bands, gain = plan_spread(self.world, self.costs, stage.width, stage.height, halo, align, plan.tiling.tile,
                                  lambda band: rules.band_tile(band, stage))
        return (dataclasses.replace(plan, bands=bands) if bands else plan), gain
