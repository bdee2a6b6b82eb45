"""Exact tiled optimisation: the loss and gradient of a whole image, computed window by window.

Why it can be exact (DESIGN.md 6): the style loss sees the features only through sums over
positions (the Gram sums ``Q = sum f f^T`` and, for w2, the feature sums ``m = sum f``), so tiles
add into one global set per layer; and once those are known, the gradient at a position is linear
in its own features, ``dL/df = (dL/dQ + dL/dQ^T) f + dL/dm``. So each call runs two passes over
the tiles: pass 1 (no grad) sums the statistics and content errors; ``style_factors`` then
differentiates the style term with respect to those small (C, C) sums by autograd (whatever the
loss: Gram or w2); pass 2 (with grad) pulls each core's ``dL/dF`` (those factors, and the content
term's ``2 w (F - P) / |P|^2``) back through its window and adds the window's input gradient into
one full-size buffer.

The statistics, the loss terms and the targets are ``objective``'s (``Statistics``, ``loss_terms``,
``make_targets``); this module adds pass 2's gradient and runs the passes over the windows that
the render plan (``engine.plan``) gives.

Three rules keep tiled == untiled up to float rounding:

* core offsets are multiples of ``align = 2**pools`` before the deepest layer, so a window's pooling
  grid lines up with the untiled one;
* every window reaches ``halo`` pixels past its core, enough that the zero padding at the window's
  edge cannot reach the core at any used layer (``tiles.required_halo``);
* windows never go past the image: at the image border a tile sees the same zero padding as the
  untiled network, and the same pooling floors at a right/bottom edge that is not a multiple of 16.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hires_nst.core import losses
from hires_nst.core.guides import guided_gradient
from hires_nst.core.tiles import Tile
from hires_nst.engine.objective import (
    LossTerms,
    Objective,
    Statistics,
    Targets,
    Weights,
    add_window,
    content_target,
    core_features,
    core_guide,
    loss_terms,
    photo_term,
    require_tileable,
    style_loss,
)
from hires_nst.errors import ConfigError
from hires_nst.model.backbones import FeatureExtractor
from hires_nst.runtime.placement import FP32, LossScale, Precision


@dataclass(frozen=True)
class StyleFactor:
    """One style layer's ``dL/dF = matrix @ F + offset`` for F as (C, positions).

    ``matrix = dL/dQ + (dL/dQ)^T`` and ``offset = dL/dm`` for the statistics the style loss reads,
    ``Q = sum f f^T`` (``Statistics.gram_sums``) and ``m = sum f`` (``feature_sums``): every
    position's gradient is linear in its own features once the global statistics are known.
    """

    matrix: Tensor  # (C, C) float32; with regions (R, C, C), one per region
    offset: Tensor | None  # (C,) float32 ((R, C) with regions), or None when the loss does not read the feature sums


def style_factors(stats: Statistics, targets: Targets, weights: Weights) -> tuple[Tensor, dict[str, StyleFactor]]:
    """The style term (``style_loss``, detached) and, per style layer, the derivative of
    ``weights.style * style_loss`` with respect to the sums: both from ONE evaluation of the term.

    By autograd over the small (C, C) statistics, so that any style loss written as a function of
    them (``objective.style_loss``: Gram, Wasserstein) is tiled exactly without a hand-derived
    gradient. For the relative Gram loss this is ``4 s (G - A) / M``, ``s = weight / |A|^2``.
    The value comes from the same evaluation (``loss_terms(..., style=)``): the w2 term's square
    roots (one per layer) are the dearest part of the loss, and ran twice per evaluation before.
    """
    with torch.enable_grad():
        grams = {n: g.detach().float().requires_grad_(True) for n, g in stats.gram_sums.items()}
        sums = {n: m.detach().float().requires_grad_(True) for n, m in stats.feature_sums.items()}
        leaves = Statistics(grams, dict(stats.areas), {}, sums)
        zero = next(iter(grams.values())).new_zeros(())
        style = style_loss(leaves, targets, weights, zero)
        found = torch.autograd.grad(weights.style * style, [*grams.values(), *sums.values()], allow_unused=True)
    d_sums = dict(zip(sums, found[len(grams):], strict=True))
    factors = {}
    for (name, leaf), d_gram in zip(grams.items(), found[:len(grams)], strict=True):
        d_gram = torch.zeros_like(leaf) if d_gram is None else d_gram
        factors[name] = StyleFactor(d_gram + d_gram.transpose(-2, -1), d_sums.get(name))
    return style.detach(), factors


def style_once(stats: Statistics, targets: Targets, weights: Weights) -> tuple[Tensor | None, dict[str, StyleFactor]]:
    """``style_factors`` where the style term has a weight; else no factors, and the term is left
    to ``loss_terms`` (None): nothing to differentiate."""
    return style_factors(stats, targets, weights) if weights.style else (None, {})


def tv_gradient(image: Tensor, weight: float) -> Tensor:
    """d(weight * TV)/d(image) on the full image: TV is cheap and image-sized."""
    with torch.enable_grad():
        leaf = image.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(weight * losses.tv_loss(leaf), leaf)
    return grad


def evaluate(image: Tensor, stats: Statistics, targets: Targets, weights: Weights, loss_scale: LossScale,
             backward: Callable[[dict[str, StyleFactor], float], Tensor]) -> LossTerms:
    """Loss terms from pass 1's ``stats``; ``backward(factors, scale)`` (pass 2) gives ``image.grad``.

    With fp16 an overflow repeats pass 2 only, at half the loss scale: pass 1 has no backward.
    """
    style, factors = style_once(stats, targets, weights)
    photo, photo_grad = photo_term(targets, weights, image)
    terms = loss_terms(stats, targets, weights, image.detach(), style, photo)
    grad = loss_scale.run(lambda scale: backward(factors, scale))
    if weights.tv > 0:
        grad += tv_gradient(image, weights.tv)
    if photo_grad is not None:
        grad += photo_grad
    image.grad = grad
    return terms


class _Pull(torch.autograd.Function):
    """A 0-d zero whose backward gives ``features`` the gradient ``grad_of(features)``.

    Pass 2 backpropagates known gradients (each core's dL/dF, ``_core_grad``); computing them
    inside the backward, from the features autograd keeps anyway, means none of them is held
    while the rest of the network runs. Only for the plain sum of such zeros (d total/d zero = 1).
    """

    @staticmethod
    def forward(ctx, features: Tensor, grad_of) -> Tensor:
        ctx.save_for_backward(features)
        ctx.grad_of = grad_of
        return features.new_zeros((), dtype=torch.float32)

    @staticmethod
    def backward(ctx, _one: Tensor) -> tuple[Tensor, None]:
        (features,) = ctx.saved_tensors
        return ctx.grad_of(features.detach()), None


class TiledObjective:
    """The untiled ``Objective``'s loss and gradient, computed tile by tile (same interface).

    Peak memory is that of one window's forward and backward pass, plus full-size image-shaped
    buffers; the price is one extra forward pass per tile and the halo. ``statistics`` (pass 1)
    and ``gradient`` (pass 2) are public: ``distributed`` runs them on each rank's band.
    """

    def __init__(self, extractor: FeatureExtractor, targets: Targets, weights: Weights, tiles: Sequence[Tile],
                 precision: Precision = FP32) -> None:
        if not tiles:
            raise ConfigError("a tiled objective needs at least one tile")
        require_tileable(extractor, len(tiles))
        self.extractor, self.targets, self.weights = extractor, targets, weights
        self.precision, self.loss_scale = precision, precision.loss_scale()
        self.tiles = list(tiles)
        self.content_layers = [n for n in weights.content_layers if n in targets.content]
        self.style_layers = list(weights.style_layers)

    @torch.no_grad()
    def statistics(self, image: Tensor) -> Statistics:
        """Pass 1: global Gram sums and content errors, one window at a time."""
        stats = Statistics()
        low = self.precision.low_precision_products(image.device)
        for tile in self.tiles:
            feats = self.precision.features(self.extractor, tile.window.crop(image))
            add_window(stats, feats, tile, self.style_layers, self.content_layers, self.targets, low,
                       self.weights.needs_means)
        return stats

    def _core_grad(self, name: str, core: Tensor, tile: Tile, factors: dict[str, StyleFactor],
                   scale: float = 1.0) -> Tensor:
        """``scale * dL/d(core)`` at one layer, in the core's dtype: (1, C, h, w).

        Style: ``matrix @ F + offset`` (``StyleFactor``); content: ``2 w (F - P) / |P|^2``. The scale
        (fp16 loss scaling) is applied in float32, before the cast to the features' dtype.
        """
        t, w = self.targets, self.weights
        channels = core.shape[1]
        grad: Tensor | None = None
        if name in factors and name in t.guides:  # regions: sum_r m_r(p) (matrix_r @ f + offset_r)
            guide = core_guide(t, tile, name)
            grad = guided_gradient(factors[name].matrix, factors[name].offset, core, guide)
        elif name in factors:
            factor = factors[name].matrix
            if self.precision.low_precision_products(core.device) and scale == 1.0:
                # bf16 features times the rounded factor, summed in fp32: no fp32 copy of the layer
                grad = torch.mm(factor.to(core.dtype), core.reshape(channels, -1)).reshape(core.shape)
            else:
                grad = (factor @ core.float().reshape(channels, -1)).reshape(core.shape)
            offset = factors[name].offset
            if offset is not None:
                grad = grad + offset.reshape(1, channels, 1, 1).to(grad.dtype)
        if name in self.content_layers:
            factor = 2.0 * w.content * w.content_layers[name] / t.content_norms[name]
            content = factor * (core.float() - content_target(t, tile, name).float())
            grad = content if grad is None else grad + content
        assert grad is not None
        return (grad * scale if scale != 1.0 else grad).to(core.dtype)

    def _backward_tile(self, image: Tensor, tile: Tile, factors: dict[str, StyleFactor], grad: Tensor,
                       scale: float = 1.0) -> None:
        """Pass 2 for one tile: add ``scale`` d(loss)/d(window) into ``grad`` (1, 3, H, W), halo included.

        Each used layer's core gets a surrogate whose backward hands it ``_core_grad``, computed only
        then from the core itself (``_Pull``): no layer's gradient waits, full-size, for the backward.
        """
        wanted = set(factors) | set(self.content_layers)

        def pull(name: str, feats: Tensor) -> Tensor | None:
            core = core_features({name: feats}, tile, name)
            if name not in wanted or not core.numel():
                return None
            return _Pull.apply(core, lambda c: self._core_grad(name, c, tile, factors, scale))

        with torch.enable_grad():
            window = tile.window.crop(image.detach()).requires_grad_(True)
            pulls = [p for p in self.precision.features(self.extractor, window, reduce=pull).values() if p is not None]
            if not pulls:
                return
            (window_grad,) = torch.autograd.grad(torch.stack(pulls).sum(), window)
        tile.window.crop(grad).add_(window_grad.to(grad.dtype))

    def gradient(self, image: Tensor, factors: dict[str, StyleFactor], scale: float = 1.0) -> Tensor:
        """Pass 2 over every tile: the network's part of d(loss)/d(image), (1, 3, H, W) float32."""
        grad = torch.zeros_like(image, dtype=torch.float32)
        for tile in self.tiles:
            self._backward_tile(image, tile, factors, grad, scale)
        return grad.div_(scale) if scale != 1.0 else grad

    def loss(self, image: Tensor) -> LossTerms:
        """Loss terms only (pass 1): for reports and scores."""
        return loss_terms(self.statistics(image), self.targets, self.weights, image.detach())

    def __call__(self, image: Tensor) -> LossTerms:
        """Loss terms, with d(total)/d(image) written to ``image.grad`` (both passes)."""
        return evaluate(image, self.statistics(image), self.targets, self.weights, self.loss_scale,
                        lambda factors, scale: self.gradient(image, factors, scale))


def make_objective(extractor: FeatureExtractor, targets: Targets, weights: Weights, tiles: Sequence[Tile],
                   precision: Precision = FP32) -> Objective | TiledObjective:
    """The cheapest exact objective over the windows ``tiles`` of the stage plan.

    Untiled when one window covers the image (no second forward pass for small stages).
    """
    if len(tiles) <= 1:
        return Objective(extractor, targets, weights, precision)
    return TiledObjective(extractor, targets, weights, tiles, precision)
