"""One stage over several devices: the two-pass tiled objective, split into one band per device.

The image is cut across its long side into equal bands, one per device (``tileplan.plan_bands``,
chosen by the stage plan). Each
device covers its band with tiles of its own size (so devices of different memory get different
tiles) and runs both public passes of ``TiledObjective`` (``statistics``, ``gradient``) over them on its own VGG replica, on a copy of
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

from hires_nst.catalog import POOLS_BEFORE
from hires_nst.objective import LossTerms, Objective, Statistics, Targets, Weights, loss_terms
from hires_nst.placement import Placement, Precision
from hires_nst.tileplan import Band, Rect, Tile
from hires_nst.tiling import TiledObjective, evaluate, make_objective

T = TypeVar("T")


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


class SpreadObjective:
    """``TiledObjective``'s loss and gradient with the tiles run on several devices at once.

    The loss terms, style factors, TV and loss scale are computed on the main device by the shared
    ``loss_terms`` / ``tiling.evaluate``; the two passes over the tiles run on the devices, on crops
    of the image copied once per evaluation.
    """

    def __init__(self, shards: Sequence[Shard], targets: Targets, weights: Weights, precision: Precision) -> None:
        self.shards, self.targets, self.weights = list(shards), targets, weights
        self.precision, self.loss_scale = precision, precision.loss_scale()
        self.tiles = [Tile(t.core.shifted(s.bounds.left, s.bounds.top), t.window.shifted(s.bounds.left, s.bounds.top))
                      for s in shards for t in s.objective.tiles]

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

    def statistics(self, crops: list[Tensor], device: torch.device) -> Statistics:
        """Pass 1 on every device; Gram sums and content errors summed on the main device."""
        return Statistics.total(self._each(lambda shard, crop: shard.objective.statistics(crop), crops), device)

    def gradient(self, crops: list[Tensor], factors: dict[str, Tensor], scale: float, image: Tensor) -> Tensor:
        """Pass 2 on every device; each band's gradient added into one image-sized buffer."""

        def band_grad(shard: Shard, crop: Tensor) -> Tensor:
            local = {n: f.to(shard.device) for n, f in factors.items()}
            return shard.objective.gradient(crop, local, scale)

        grad = torch.zeros_like(image, dtype=torch.float32)
        for shard, part in zip(self.shards, self._each(band_grad, crops)):
            shard.bounds.crop(grad).add_(part.to(grad.device))
        return grad

    def loss(self, image: Tensor) -> LossTerms:
        stats = self.statistics(self._take(image), image.device)
        return loss_terms(stats, self.targets, self.weights, image.detach())

    def __call__(self, image: Tensor) -> LossTerms:
        """As ``TiledObjective.__call__``, with both passes spread over the devices."""
        crops = self._take(image)
        return evaluate(image, self.statistics(crops, image.device), self.targets, self.weights, self.loss_scale,
                        lambda factors, scale: self.gradient(crops, factors, scale, image))


def make_spread_objective(placement: Placement, targets: Targets, weights: Weights, bands: Sequence[Band]
                          ) -> Objective | TiledObjective | SpreadObjective:
    """The objective of a stage over ``placement``'s devices, one of the plan's ``bands`` each.

    Fewer than two bands (an image too small to share) runs on the main device alone.
    """
    precision = placement.precision
    if len(bands) < 2:
        return make_objective(placement.extractor, targets, weights, bands[0].tiles, precision)
    shards = []
    for band, device, replica in zip(bands, placement.devices, placement.replicas):
        bounds = band.bounds
        local = [Tile(t.core.shifted(-bounds.left, -bounds.top), t.window.shifted(-bounds.left, -bounds.top))
                 for t in band.tiles]
        objective = TiledObjective(replica, shard_targets(targets, bounds, device), weights, local, precision)
        shards.append(Shard(device, bounds, objective))
    return SpreadObjective(shards, targets, weights, precision)
