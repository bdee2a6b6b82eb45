"""One stage over several devices: the two-pass tiled objective, split into one band per device.

The image is cut across its long side into equal bands, one per device (``plan_bands``). Each
device covers its band with tiles of its own size (so devices of different memory get different
tiles) and runs both passes of ``TiledObjective`` over them on its own VGG replica, on a copy of
the part of the image its windows read. Between the passes the statistics are reduced on the main
device (DESIGN.md 6, last paragraph):

* pass 1: each device's Gram sums and content errors are summed onto the main device: about
  2.4 MB for the default style layers, whatever the image size;
* pass 2: each device returns the gradient of its band's windows (band + halo, 3 floats per pixel),
  which is added into the image's gradient. The crop of the image each device reads (the same
  size) is copied to it once per evaluation: both passes use it.

Devices run at once, one Python thread each (CUDA kernels release the GIL). The exactness rules of
``tiling`` hold unchanged: bands start on the pooling grid and windows reach past a band's edge
into its neighbours by the full halo, so the result equals the single-device one up to the order
of float additions. With one device nothing here runs: ``make_objective`` is the whole story.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence, TypeVar

import torch
from torch import Tensor

from hires_nst.features import POOLS_BEFORE
from hires_nst.objective import LossTerms, Objective, Targets, Weights
from hires_nst.placement import Placement, Precision
from hires_nst.tileplan import Rect, Tile, align_for, plan_tiles, required_halo, round_up
from hires_nst.tiling import TiledObjective, _Totals, make_objective, used_layers

T = TypeVar("T")

# Cost of the backward pass to the input relative to the forward pass (frozen weights, so no
# weight gradients). Measured on the dev CPU: 1.5-2.1x (benchmarks/speed.py); GPUs are similar.
BACKWARD_COST = 2.0
# Spread an otherwise untiled stage only when the cost model promises at least this speed-up:
# the copies and reductions between devices are not in the model.
SPREAD_GAIN = 1.1


# --------------------------------------------------------------------------- the plan (pure)


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


# --------------------------------------------------------------------------- the objective


@dataclass
class Shard:
    """One device's part: a ``TiledObjective`` over the ``bounds`` crop of the image, in its coordinates."""

    device: torch.device
    bounds: Rect
    objective: TiledObjective

    def take(self, image: Tensor) -> Tensor:
        """The crop of ``image`` this device reads, on this device (a view on the main device)."""
        return self.bounds.crop(image.detach()).to(self.device)


def shard_targets(targets: Targets, bounds: Rect, device: torch.device) -> Targets:
    """The targets one device needs: content maps cropped to ``bounds``, Grams and norms copied."""
    content = {n: bounds.at_depth(POOLS_BEFORE[n]).crop(t).to(device) for n, t in targets.content.items()}
    return Targets(content, {n: g.to(device) for n, g in targets.style.items()},
                   {n: v.to(device) for n, v in targets.content_norms.items()},
                   {n: v.to(device) for n, v in targets.style_norms.items()})


def _sum_totals(parts: Sequence[_Totals], device: torch.device) -> _Totals:
    """Per-device pass-1 totals summed on ``device``, in device order (deterministic)."""
    first = parts[0]
    gram_sums = {n: sum((p.gram_sums[n].to(device) for p in parts[1:]), first.gram_sums[n].to(device))
                 for n in first.gram_sums}
    areas = {n: sum(p.areas[n] for p in parts) for n in first.areas}
    errors = {n: sum((p.content_errors[n].to(device) for p in parts[1:]), first.content_errors[n].to(device))
              for n in first.content_errors}
    return _Totals(gram_sums, areas, errors)


class SpreadObjective(TiledObjective):
    """``TiledObjective`` whose tiles run on several devices at once; same loss, same gradient.

    The loss terms, style factors, TV and loss scale are computed on the main device by the
    inherited code; the two passes over the tiles run on the devices, on crops of the image
    copied once per evaluation.
    """

    def __init__(self, shards: Sequence[Shard], targets: Targets, weights: Weights, precision: Precision) -> None:
        tiles = [Tile(t.core.shifted(s.bounds.left, s.bounds.top), t.window.shifted(s.bounds.left, s.bounds.top))
                 for s in shards for t in s.objective.tiles]
        super().__init__(shards[0].objective.extractor, targets, weights, tiles, precision)
        self.shards = list(shards)

    def _each(self, work: Callable[..., T], *columns: Sequence) -> list[T]:
        """``work(shard, *row)`` for every shard at once, one thread each; results in shard order.

        ``columns`` are per-shard arguments: ``_each(f, crops)`` calls ``f(shards[k], crops[k])``.
        """

        def run(row: tuple) -> T:
            shard = row[0]
            if shard.device.type == "cuda":
                with torch.cuda.device(shard.device):
                    return work(*row)
            return work(*row)

        with ThreadPoolExecutor(max_workers=len(self.shards), thread_name_prefix="hires-nst-device") as pool:
            return list(pool.map(run, zip(self.shards, *columns)))

    def _take(self, image: Tensor) -> list[Tensor]:
        """Each device's crop of the image, copied once per evaluation and used by both passes."""
        return self._each(lambda shard: shard.take(image))

    def _accumulate_crops(self, crops: list[Tensor], device: torch.device) -> _Totals:
        """Pass 1 on every device; Gram sums and content errors summed on the main device."""
        parts = self._each(lambda shard, crop: shard.objective._accumulate(crop), crops)
        return _sum_totals(parts, device)

    def _backward_crops(self, crops: list[Tensor], factors: dict[str, Tensor], scale: float, image: Tensor) -> Tensor:
        """Pass 2 on every device; each band's gradient added into one image-sized buffer."""

        def band_grad(shard: Shard, crop: Tensor) -> Tensor:
            local = {n: f.to(shard.device) for n, f in factors.items()}
            return shard.objective._backward(crop, local, scale)

        grad = torch.zeros_like(image, dtype=torch.float32)
        for shard, part in zip(self.shards, self._each(band_grad, crops)):
            shard.bounds.crop(grad).add_(part.to(grad.device))
        return grad

    def loss(self, image: Tensor) -> LossTerms:
        return self._terms(image, self._accumulate_crops(self._take(image), image.device))

    def __call__(self, image: Tensor) -> LossTerms:
        """As ``TiledObjective.__call__``, with both passes spread over the devices."""
        crops = self._take(image)
        totals = self._accumulate_crops(crops, image.device)
        terms = self._terms(image, totals)
        factors = self._style_factors(totals) if self.weights.style else {}
        grad = self.loss_scale.run(lambda scale: self._backward_crops(crops, factors, scale, image))
        if self.weights.tv > 0:
            grad += self._tv_grad(image)
        image.grad = grad
        return terms


def make_spread_objective(placement: Placement, targets: Targets, weights: Weights, width: int, height: int,
                          tile_sizes: Sequence[int | None], halo: int | None = None
                          ) -> Objective | TiledObjective | SpreadObjective:
    """The objective of a ``width`` x ``height`` stage over ``placement``'s devices.

    ``tile_sizes[k]`` is device k's tile side in its band (None: one window per band). An image
    too small for two bands falls back to ``make_objective`` on the main device.
    """
    layers = used_layers(targets, weights)
    halo = required_halo(layers) if halo is None else halo
    bands = plan_bands(width, height, list(tile_sizes)[: len(placement.devices)], halo, align_for(layers))
    precision = placement.precision
    if len(bands) < 2:
        return make_objective(placement.extractor, targets, weights, width, height, tile_sizes[0], halo,
                              precision=precision)
    shards = []
    for band, device, replica in zip(bands, placement.devices, placement.replicas):
        bounds = band.bounds
        local = [Tile(t.core.shifted(-bounds.left, -bounds.top), t.window.shifted(-bounds.left, -bounds.top))
                 for t in band.tiles]
        objective = TiledObjective(replica, shard_targets(targets, bounds, device), weights, local, precision)
        shards.append(Shard(device, bounds, objective))
    return SpreadObjective(shards, targets, weights, precision)
