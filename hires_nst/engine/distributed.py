"""One stage's objective shared out between ranks: each rank its band, two exchanges per iteration.

Every rank holds the whole image and steps the same optimiser on it; each computes only its band
(``bands.plan_bands``; tiles inside it sized from its own memory). Per evaluation (DESIGN.md 6):

1. pass 1 on the band: the ``Statistics`` of its cores (Gram sums, content errors), packed in ONE
   float32 buffer (about 2.4 MB for the default layers, whatever the image size) and
   all-reduced. The areas need no exchange: the cores cover the image once, so the totals are
   the image's at each depth;
2. the loss terms (``objective.loss_terms``) from the global statistics, the same on every rank;
3. pass 2: the band's input gradient. When the band is one window, pass 1 kept its autograd graph
   and this is one backward through it, of the loss written as a function of this rank's own
   statistics (the others' enter as constants): one forward + one backward per iteration, as
   untiled. Otherwise each tile runs again with grad (``TiledObjective.gradient``);
4. the bands' gradients (bounds-sized, zero-padded to the largest) all-gathered and added into the
   image gradient in rank order, so every rank gets the same bits; TV is image-sized and cheap, so
   every rank adds it itself, and so the photo-mode regulariser (``objective.photo_term``).

An all-gather of bounds moves ``(N - 1)`` bands per rank, about ``(N - 1) / N`` of the image plus
halos; an all-reduce of the whole image gradient would move ``2 (N - 1) / N`` of it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import Tensor

from hires_nst.config.catalog import POOLS_BEFORE
from hires_nst.core.bands import BandPlan, band_tiles
from hires_nst.core.tiles import Rect
from hires_nst.engine.objective import LossTerms, Statistics, Targets, Weights, add_window, loss_terms, photo_term
from hires_nst.engine.tiling import StyleFactor, TiledObjective, style_once, tv_gradient
from hires_nst.model.backbones import FeatureExtractor
from hires_nst.runtime.placement import Precision
from hires_nst.runtime.ranks import World, all_gather, all_reduce, broadcast, broadcast_object


def band_targets(targets: Targets, bounds: Rect) -> Targets:
    """The targets one rank needs: content maps and region guides cropped to its bounds; Grams and
    norms as they are."""
    content = {n: bounds.at_depth(POOLS_BEFORE[n]).crop(t).contiguous() for n, t in targets.content.items()}
    guides = {n: bounds.at_depth(POOLS_BEFORE[n]).crop(g).contiguous() for n, g in targets.guides.items()}
    return dataclasses.replace(targets, content=content, guides=guides)


def image_areas(width: int, height: int, layers: Sequence[str],
                targets: Targets | None = None) -> dict[str, int | Tensor]:
    """Positions per layer of the whole image: what the cores' areas add up to over all ranks
    (a masked layer: its regions' guide masses, from the whole guide every rank holds)."""
    guides = targets.guides if targets is not None else {}
    return {n: guides[n].sum(dim=(-2, -1)) if n in guides else (width >> POOLS_BEFORE[n]) * (height >> POOLS_BEFORE[n])
            for n in layers}


class BandObjective:
    """The stage's loss and gradient, computed by all ranks together (same interface as ``Objective``).

    Every rank must call it (and ``loss``) at the same points with the same image.
    """

    def __init__(self, world: World, extractor: FeatureExtractor, targets: Targets, weights: Weights,
                 plan: BandPlan, width: int, height: int, precision: Precision) -> None:
        self.world, self.plan, self.targets, self.weights = world, plan, targets, weights
        self.precision, self.loss_scale = precision, precision.loss_scale()
        self.band = plan.band(world.rank)
        self.tiles = band_tiles(self.band, width, height, plan.tile, plan.halo, plan.align) if self.band else []
        # This rank's passes, in its bounds' coordinates, against the targets cropped to them.
        self.local = (TiledObjective(extractor, band_targets(targets, self.band.bounds), weights, self.tiles, precision)
                      if self.band else None)
        self.style_layers = list(weights.style_layers)
        self.content_layers = [n for n in weights.content_layers if n in targets.content]
        self.areas = image_areas(width, height, self.style_layers, targets)
        self.padded = max(b.bounds.height for b in plan.bands), max(b.bounds.width for b in plan.bands)

    @property
    def one_window(self) -> bool:
        return len(self.tiles) == 1

    # ------------------------------------------------------------------ pass 1 and its exchange

    def _crop(self, image: Tensor) -> Tensor:
        return self.band.bounds.crop(image.detach()) if self.band else image.detach()[..., :0, :0]

    def _with_graph(self, leaf: Tensor) -> Statistics:
        """This rank's statistics of its one window, with their autograd graph back to ``leaf``."""
        assert self.local is not None
        local = self.local
        stats = Statistics()
        add_window(stats, self.precision.features(local.extractor, leaf), self.tiles[0], self.style_layers,
                   self.content_layers, local.targets, means=self.weights.needs_means)
        return stats

    def _layout(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """What pass 1 exchanges, in order: (Statistics field, layer, shape)."""
        layout = [("gram_sums", n, tuple(self.targets.style[n].shape)) for n in self.style_layers]
        if self.weights.needs_means:
            layout += [("feature_sums", n, tuple(self.targets.style[n].shape[:-1])) for n in self.style_layers]
        return layout + [("content_errors", n, ()) for n in self.content_layers]

    def _pack(self, local: Statistics, device: torch.device) -> Tensor:
        """Every sum of ``_layout`` as one float32 vector (zeros for what this rank has not got)."""
        parts = []
        for kind, name, shape in self._layout():
            part = getattr(local, kind).get(name)
            parts.append(part.detach().reshape(-1).float() if part is not None
                         else torch.zeros(math.prod(shape), device=device))
        return torch.cat(parts) if parts else torch.zeros(1, device=device)

    def _global(self, local: Statistics, device: torch.device) -> Statistics:
        """The image's statistics: one all-reduce of one packed buffer.

        Each sum is returned as ``local + (total - local).detach()``: the total's value, with the
        gradient of this rank's own part (empty without a graph), so that ``loss_terms`` of it
        backpropagates exactly this rank's share.
        """
        total = all_reduce(self.world, self._pack(local, device), "the pass-1 all-reduce")
        stats, at = Statistics(areas=dict(self.areas)), 0
        for kind, name, shape in self._layout():
            size = math.prod(shape)
            reduced = total[at:at + size].view(shape)
            mine = getattr(local, kind).get(name)
            getattr(stats, kind)[name] = reduced if mine is None else mine + (reduced - mine).detach()
            at += size
        return stats

    # ------------------------------------------------------------------ pass 2 and its exchange

    def _gather(self, part: Tensor, like: Tensor) -> Tensor:
        """Every rank's bounds gradient added into one image gradient, in rank order."""
        height, width = self.padded
        padded = like.new_zeros((1, 3, height, width), dtype=torch.float32)
        padded[..., :part.shape[-2], :part.shape[-1]] = part
        grad = torch.zeros_like(like, dtype=torch.float32)
        gathered = all_gather(self.world, padded, "the gradient all-gather")  # one per rank
        for band, got in zip(self.plan.bands, gathered, strict=False):  # ranks past the last band have none
            bounds = band.bounds
            bounds.crop(grad).add_(got[..., :bounds.height, :bounds.width])
        return grad

    def _band_gradient(self, crop: Tensor, kept: tuple[Tensor, Tensor] | None, factors: dict[str, StyleFactor],
                       scale: float) -> Tensor:
        """d(loss)/d(bounds) of this rank's band, (1, 3, h, w) float32 (empty without a band),
        backpropagated at loss scale ``scale`` (fp16) and divided by it again. ``factors``: pass 2's
        style factors (``tiling.style_factors``) when the band has several windows."""
        if self.local is None:
            return crop.new_zeros((1, 3, 0, 0), dtype=torch.float32)
        if kept is None:
            return self.local.gradient(crop, factors, scale)
        leaf, total = kept
        # fp16 may need this backward again at a lower scale: keep the graph for it then.
        (grad,) = torch.autograd.grad(total * scale if scale != 1.0 else total, leaf,
                                      retain_graph=self.loss_scale.enabled)
        return grad.float().div_(scale) if scale != 1.0 else grad.float()

    # ------------------------------------------------------------------ the interface

    @torch.no_grad()
    def loss(self, image: Tensor) -> LossTerms:
        """Loss terms only (pass 1 and its all-reduce): for reports and scores."""
        local = self.local.statistics(self._crop(image)) if self.local else Statistics()
        return loss_terms(self._global(local, image.device), self.targets, self.weights, image.detach())

    def __call__(self, image: Tensor) -> LossTerms:
        """Loss terms, with d(total)/d(image) written to ``image.grad``; the same on every rank."""
        crop, kept = self._crop(image), None
        factors: dict[str, StyleFactor] = {}
        photo, photo_grad = photo_term(self.targets, self.weights, image)  # whole, on every rank, like TV
        if self.one_window:
            with torch.enable_grad():
                leaf = crop.clone().requires_grad_(True)
                stats = self._global(self._with_graph(leaf), image.device)
                terms = loss_terms(stats, self.targets, self.weights, image.detach(), photo=photo)
            kept = (leaf, terms["total"])
        else:  # the style term and its factors from one evaluation, before any fp16 retry of pass 2
            local = self.local.statistics(crop) if self.local else Statistics()
            stats = self._global(local, image.device)
            style, factors = style_once(stats, self.targets, self.weights)
            terms = loss_terms(stats, self.targets, self.weights, image.detach(), style, photo)

        def backward(scale: float) -> Tensor:  # the gathered gradient: an overflow shows on every rank
            with torch.enable_grad():
                part = self._band_gradient(crop, kept, factors, scale)
            return self._gather(part, image)

        grad = self.loss_scale.run(backward)
        if self.weights.tv > 0:
            grad += tv_gradient(image, self.weights.tv)
        if photo_grad is not None:
            grad += photo_grad
        image.grad = grad
        return {k: v.detach() for k, v in terms.items()}


def same_start(world: World, start: Tensor, warm: dict[str, Tensor] | None) -> tuple[Tensor, dict[str, Tensor] | None]:
    """Rank 0's start image and Adam state on every rank, at the start of each stage.

    Rank 0 alone reads the work dir (a resumed stage, its saved progress), and a stage that was not
    shared ran on every rank by itself (different GPUs may round differently): from here on, the
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
