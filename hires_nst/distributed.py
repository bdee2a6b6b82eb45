"""One stage's objective shared out between ranks: each rank its band, two exchanges per iteration.

Every rank holds the whole image and steps the same optimiser on it; each computes only its band
(``bands.plan_bands``; tiles inside it sized from its own memory). Per evaluation (DESIGN.md 6):

1. pass 1 on the band: Gram sums and content errors of its cores, packed in ONE float32 buffer
   (about 2.4 MB for the default layers, whatever the image size) and all-reduced. The areas need
   no exchange: the cores cover the image once, so the totals are the image's at each depth;
2. the loss terms and the style factors ``c (G - A)`` from the global sums, the same on every rank;
3. pass 2: the band's input gradient. When the band is one window, pass 1 kept its autograd graph
   and this is one backward through it (one forward + one backward per iteration, as untiled);
   otherwise each tile runs again with grad, as ``TiledObjective`` does;
4. the bands' gradients (bounds-sized, zero-padded to the largest) all-gathered and added into the
   image gradient in rank order, so every rank gets the same bits; TV is image-sized and cheap, so
   every rank adds it itself.

An all-gather of bounds moves ``(N - 1)`` bands per rank, about ``(N - 1) / N`` of the image plus
halos; an all-reduce of the whole image gradient would move ``2 (N - 1) / N`` of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from hires_nst import losses
from hires_nst.bands import Band, band_tiles
from hires_nst.features import POOLS_BEFORE
from hires_nst.objective import LossTerms, Targets, Weights
from hires_nst.placement import Precision
from hires_nst.ranks import World, all_gather, all_reduce, broadcast, broadcast_object
from hires_nst.tileplan import Rect, Tile
from hires_nst.tiling import TiledObjective, _core_features, _Totals


@dataclass(frozen=True)
class BandPlan:
    """A spread stage: every rank's band (a rank past the end has none) and this rank's tile side."""

    bands: tuple[Band, ...]
    tile: int | None  # this rank's tile side in its band; None: the band is one window
    halo: int
    align: int

    def band(self, rank: int) -> Band | None:
        return self.bands[rank] if rank < len(self.bands) else None


def band_targets(targets: Targets, bounds: Rect) -> Targets:
    """The targets one rank needs: content maps cropped to its bounds; Grams and norms as they are."""
    content = {n: bounds.at_depth(POOLS_BEFORE[n]).crop(t).contiguous() for n, t in targets.content.items()}
    return Targets(content, targets.style, targets.content_norms, targets.style_norms)


def image_areas(width: int, height: int, layers: Sequence[str]) -> dict[str, int]:
    """Positions per layer of the whole image: what the cores' areas add up to over all ranks."""
    return {n: (width >> POOLS_BEFORE[n]) * (height >> POOLS_BEFORE[n]) for n in layers}


class BandObjective:
    """The stage's loss and gradient, computed by all ranks together (same interface as ``Objective``).

    Every rank must call it (and ``loss``) at the same points with the same image.
    """

    def __init__(self, world: World, extractor: torch.nn.Module, targets: Targets, weights: Weights,
                 plan: BandPlan, width: int, height: int, precision: Precision) -> None:
        self.world, self.plan, self.weights = world, plan, weights
        self.shape = (height, width)
        self.band = plan.band(world.rank)
        bounds = self.band.bounds if self.band else Rect(0, 0, width, height)
        tiles = band_tiles(self.band, width, height, plan.tile, plan.halo, plan.align) if self.band else []
        # The local objective runs this rank's tiles; its loss-term code reads only global totals.
        # A rank without a band gets a stand-in tile that never runs (the class wants one).
        self.local = TiledObjective(extractor, band_targets(targets, bounds), weights,
                                    tiles or [Tile(Rect(0, 0, 1, 1), Rect(0, 0, 1, 1))], precision)
        self.local.tiles = tiles
        self.areas = image_areas(width, height, self.local.style_layers)
        self.loss_scale = self.local.loss_scale
        self.channels = {n: targets.style[n].shape[0] for n in self.local.style_layers}
        self.padded = max(b.bounds.height for b in plan.bands), max(b.bounds.width for b in plan.bands)

    @property
    def one_window(self) -> bool:
        return len(self.local.tiles) == 1

    # ------------------------------------------------------------------ pass 1 and the exchange

    def _crop(self, image: Tensor) -> Tensor:
        return self.band.bounds.crop(image.detach()) if self.band else image.detach()[..., :0, :0]

    def _local_totals(self, crop: Tensor, keep_graph: bool) -> _Totals:
        """This rank's Gram sums and content errors; with their autograd graph when ``keep_graph``."""
        local = self.local
        if not keep_graph:
            return local._accumulate(crop)  # no tiles (no band): zero content errors, no Gram sums
        (tile,) = local.tiles
        feats = local.precision.features(local.extractor, crop)
        sums = {n: losses.gram_sum(_core_features(feats, tile, n)) for n in local.style_layers}
        errors = {n: (_core_features(feats, tile, n).float() - local._content_target(tile, n).float()).square().sum()
                  for n in local.content_layers}
        return _Totals(sums, {}, errors)

    def _reduce(self, local: _Totals, device: torch.device) -> _Totals:
        """The global totals: one all-reduce of one packed float32 buffer."""
        parts = []
        for name in self.local.style_layers:
            part = local.gram_sums.get(name)
            parts.append(part.detach().reshape(-1) if part is not None
                         else torch.zeros(self.channels[name] ** 2, device=device))
        for name in self.local.content_layers:
            error = local.content_errors.get(name)
            parts.append(error.detach().reshape(1) if error is not None else torch.zeros(1, device=device))
        buffer = all_reduce(self.world, torch.cat(parts).float() if parts else torch.zeros(1, device=device),
                            "the pass-1 all-reduce")
        sums, errors, at = {}, {}, 0
        for name in self.local.style_layers:
            size = self.channels[name]
            sums[name] = buffer[at:at + size * size].view(size, size)
            at += size * size
        for name in self.local.content_layers:
            errors[name] = buffer[at]
            at += 1
        return _Totals(sums, dict(self.areas), errors)

    # ------------------------------------------------------------------ pass 2 and the exchange

    def _surrogate(self, local: _Totals, factors: dict[str, Tensor]) -> Tensor:
        """A scalar whose gradient through the kept graph is the loss's: ``<factor / 2, S>`` per style
        layer (``d<K, F F^T>/dF = 2 K F`` for symmetric K) and ``c |F - P|^2`` per content layer."""
        t, w = self.local.targets, self.weights
        total = sum(((factors[n] / 2) * local.gram_sums[n]).sum() for n in factors)
        for name in self.local.content_layers:
            total = total + (w.content * w.content_layers[name] / t.content_norms[name]) * local.content_errors[name]
        return total

    def _gather(self, part: Tensor, like: Tensor) -> Tensor:
        """Every rank's bounds gradient added into one image gradient, in rank order."""
        height, width = self.padded
        padded = like.new_zeros((1, 3, height, width), dtype=torch.float32)
        padded[..., :part.shape[-2], :part.shape[-1]] = part
        grad = torch.zeros_like(like, dtype=torch.float32)
        for band, got in zip(self.plan.bands, all_gather(self.world, padded, "the gradient all-gather")):
            bounds = band.bounds
            bounds.crop(grad).add_(got[..., :bounds.height, :bounds.width])
        return grad

    def _band_gradient(self, crop: Tensor, kept: tuple[Tensor, _Totals] | None, factors: dict[str, Tensor],
                       scale: float) -> Tensor:
        """d(loss)/d(bounds) for this rank's band, (1, 3, h, w) float32 (empty without a band),
        backpropagated at loss scale ``scale`` (fp16) and divided by it again."""
        if self.band is None:
            return crop.new_zeros((1, 3, 0, 0), dtype=torch.float32)
        if kept is None:
            return self.local._backward(crop, factors, scale)
        leaf, local = kept
        surrogate = self._surrogate(local, factors)
        # fp16 may need this backward again at a lower scale: keep the graph for it then.
        (grad,) = torch.autograd.grad(surrogate * scale if scale != 1.0 else surrogate, leaf,
                                      retain_graph=self.loss_scale.enabled)
        return grad.float().div_(scale) if scale != 1.0 else grad.float()

    # ------------------------------------------------------------------ the interface

    def loss(self, image: Tensor) -> LossTerms:
        """Loss terms only (pass 1 and its all-reduce): for reports and scores."""
        crop = self._crop(image)
        with torch.no_grad():
            totals = self._reduce(self._local_totals(crop, keep_graph=False), image.device)
            return self.local._terms(image, totals)

    def __call__(self, image: Tensor) -> LossTerms:
        """Loss terms, with d(total)/d(image) written to ``image.grad``; the same on every rank."""
        crop = self._crop(image)
        kept = None
        if self.one_window:
            with torch.enable_grad():
                leaf = crop.clone().requires_grad_(True)
                local = self._local_totals(leaf, keep_graph=True)
            kept = (leaf, local)
        else:
            local = self._local_totals(crop, keep_graph=False)
        totals = self._reduce(local, image.device)
        with torch.no_grad():
            terms = self.local._terms(image, totals)
            factors = self.local._style_factors(totals) if self.weights.style else {}

        def backward(scale: float) -> Tensor:  # the gathered gradient: an overflow shows on every rank
            with torch.enable_grad():
                part = self._band_gradient(crop, kept, factors, scale)
            return self._gather(part, image)

        grad = self.loss_scale.run(backward)
        if self.weights.tv > 0:
            grad += self.local._tv_grad(image)
        image.grad = grad
        return terms



def same_start(world: World, start: Tensor, warm: dict[str, Tensor] | None) -> tuple[Tensor, dict[str, Tensor] | None]:
    """Rank 0's start image and Adam state on every rank, at the start of each stage.

    Rank 0 alone reads the work dir (a resumed stage, its saved progress), and a stage that was not
    spread ran on every rank by itself (different GPUs may round differently): from here on, the
    ranks step the same image.
    """
    start = broadcast(world, start.detach().contiguous().float(), "sharing the stage's start")
    layout = broadcast_object(world, None if warm is None else {k: (tuple(v.shape), v.dtype) for k, v in warm.items()},
                              "sharing the stage's start")
    if layout is None:
        return start, None
    if warm is None or not world.main:
        warm = {k: torch.empty(shape, dtype=dtype, device=start.device) for k, (shape, dtype) in layout.items()}
    return start, {k: broadcast(world, warm[k].to(start.device).contiguous(), "sharing the stage's start")
                   for k in layout}
