"""Exact tiled optimisation: the loss and gradient of a whole image, computed window by window.

Why it can be exact (DESIGN.md 6): a Gram matrix is a sum over positions, so tiles add into one
global Gram per layer; and the style gradient at a position needs only that global Gram,
``dL/dF = c (G - A) F``. So each call runs two passes over the tiles: pass 1 (no grad) sums the
Grams and content errors, pass 2 (with grad) backpropagates the analytic ``dL/dF`` of each tile's
core into its window and adds the window's input gradient into one full-size buffer.

Three rules keep tiled == untiled up to float rounding:

* core offsets are multiples of ``align = 2**pools`` before the deepest layer, so a window's pooling
  grid lines up with the untiled one;
* every window reaches ``halo`` pixels past its core, enough that the zero padding at the window's
  edge cannot reach the core at any used layer (``required_halo``);
* windows never go past the image: at the image border a tile sees the same zero padding as the
  untiled network, and the same pooling floors at a right/bottom edge that is not a multiple of 16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch
from torch import Tensor

from hires_nst import losses
from hires_nst.errors import ConfigError
from hires_nst.features import POOLS_BEFORE, VGGFeatures
from hires_nst.objective import LossTerms, Objective, Targets, Weights, combine, make_targets
from hires_nst.placement import FP32, Precision
from hires_nst.tileplan import Tile, align_for, plan_tiles, required_halo


# --------------------------------------------------------------------------- the objective


class _Pull(torch.autograd.Function):
    """A 0-d zero whose backward gives ``features`` the gradient ``grad_of(features)``.

    Pass 2 backpropagates known gradients (the analytic dL/dF of each core); computing them
    inside the backward, from the features autograd keeps anyway, means none of them is held
    while the rest of the network runs. Only for the plain sum of such zeros (d total/d zero = 1).
    """

    @staticmethod
    def forward(ctx, features: Tensor, grad_of) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(features)
        ctx.grad_of = grad_of
        return features.new_zeros((), dtype=torch.float32)

    @staticmethod
    def backward(ctx, _one: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (features,) = ctx.saved_tensors
        return ctx.grad_of(features.detach()), None



def _core_features(feats: dict[str, Tensor], tile: Tile, name: str) -> Tensor:
    """A layer's features at the tile's core: (1, C, h, w) cropped from the window's map."""
    rows, cols = tile.core_in_window(POOLS_BEFORE[name])
    return feats[name][:, :, rows, cols]


def _add_grams(feats: dict[str, Tensor], tile: Tile, layers: Iterable[str],
               sums: dict[str, Tensor], areas: dict[str, int], low: bool = False) -> None:
    """Add the core's ``sum f f^T`` (C, C, float32) and its area into the running totals per layer."""
    for name in layers:
        core = _core_features(feats, tile, name)  # (1, C, h, w)
        part = losses.gram_sum(core, low)
        sums[name] = sums[name] + part if name in sums else part
        areas[name] = areas.get(name, 0) + core.shape[2] * core.shape[3]


@dataclass
class _Totals:
    """What pass 1 sums over all tiles: the global statistics the loss and gradient need."""

    gram_sums: dict[str, Tensor]  # style layer -> (C, C) float32, sum over positions of f f^T
    areas: dict[str, int]  # style layer -> untiled H * W at that layer
    content_errors: dict[str, Tensor]  # content layer -> 0-d float32, sum of (F - P)^2

    def grams(self) -> dict[str, Tensor]:
        return {n: s / self.areas[n] for n, s in self.gram_sums.items()}


def used_layers(targets: Targets, weights: Weights) -> list[str]:
    """The layers whose values enter the loss: the content layers with a target, and the style layers."""
    content = [n for n in weights.content_layers if n in targets.content]
    return list(dict.fromkeys(content + list(weights.style_layers)))


class TiledObjective:
    """The untiled ``Objective``'s loss and gradient, computed tile by tile (same interface).

    Peak memory is that of one window's forward and backward pass, plus full-size image-shaped
    buffers; the price is one extra forward pass per tile and the halo.
    """

    def __init__(self, extractor: VGGFeatures, targets: Targets, weights: Weights, tiles: Sequence[Tile],
                 precision: Precision = FP32) -> None:
        if not tiles:
            raise ConfigError("a tiled objective needs at least one tile")
        self.extractor, self.targets, self.weights = extractor, targets, weights
        self.precision, self.loss_scale = precision, precision.loss_scale()
        self.tiles = list(tiles)
        self.content_layers = [n for n in weights.content_layers if n in targets.content]
        self.style_layers = list(weights.style_layers)

    def _content_target(self, tile: Tile, name: str) -> Tensor:
        """The content features at the tile's core, cropped from the untiled target."""
        return tile.core.at_depth(POOLS_BEFORE[name]).crop(self.targets.content[name])

    @torch.no_grad()
    def _accumulate(self, image: Tensor) -> _Totals:
        """Pass 1: global Gram sums and content errors, one window at a time."""
        zeros = {n: image.new_zeros((), dtype=torch.float32) for n in self.content_layers}
        totals = _Totals({}, {}, zeros)
        for tile in self.tiles:
            self._accumulate_tile(image, tile, totals)
        return totals

    def _accumulate_tile(self, image: Tensor, tile: Tile, totals: _Totals) -> None:
        feats = self.precision.features(self.extractor, tile.window.crop(image))
        _add_grams(feats, tile, self.style_layers, totals.gram_sums, totals.areas,
                   self.precision.low_precision_products(image.device))
        for name in self.content_layers:
            diff = _core_features(feats, tile, name).float() - self._content_target(tile, name).float()
            totals.content_errors[name] += diff.square().sum()

    def _terms(self, image: Tensor, totals: _Totals) -> LossTerms:
        """The loss terms from the global totals, exactly as ``Objective`` defines them."""
        t, w = self.targets, self.weights
        zero = image.new_zeros((), dtype=torch.float32)
        content = sum((lw * totals.content_errors[n] / t.content_norms[n]
                       for n, lw in w.content_layers.items() if n in t.content), zero)
        grams = totals.grams()
        style = sum((lw * losses.relative_error(grams[n], t.style[n], t.style_norms[n])
                     for n, lw in w.style_layers.items()), zero)
        tv = losses.tv_loss(image.detach()) if w.tv > 0 else zero
        return combine(w, content, style, tv)

    def _style_factors(self, totals: _Totals) -> dict[str, Tensor]:
        """Per style layer, ``4 s (G - A) / M`` with ``s = style weight * layer weight / |A|^2``.

        Then ``dL/dF = factor @ F`` for F as (C, positions): from ``L = s |G - A|^2``,
        ``G = F F^T / M`` and the symmetry of ``G - A``.
        """
        t, w = self.targets, self.weights
        grams = totals.grams()
        return {n: (4.0 * w.style * lw / (t.style_norms[n] * totals.areas[n])) * (grams[n] - t.style[n].float())
                for n, lw in w.style_layers.items()}

    def _core_grad(self, name: str, core: Tensor, tile: Tile, factors: dict[str, Tensor],
                   scale: float = 1.0) -> Tensor:
        """``scale * dL/d(core)`` at one layer, in the core's dtype: (1, C, h, w).

        Style: ``factor @ F``; content: ``2 w (F - P) / |P|^2``. The scale (fp16 loss scaling) is
        applied in float32, before the cast to the features' dtype.
        """
        t, w = self.targets, self.weights
        channels = core.shape[1]
        grad: Tensor | None = None
        if name in factors:
            factor = factors[name]
            if self.precision.low_precision_products(core.device) and scale == 1.0:
                # bf16 features times the rounded factor, summed in fp32: no fp32 copy of the layer
                grad = torch.mm(factor.to(core.dtype), core.reshape(channels, -1)).reshape(core.shape)
            else:
                grad = (factor @ core.float().reshape(channels, -1)).reshape(core.shape)
        if name in self.content_layers:
            factor = 2.0 * w.content * w.content_layers[name] / t.content_norms[name]
            content = factor * (core.float() - self._content_target(tile, name).float())
            grad = content if grad is None else grad + content
        assert grad is not None
        return (grad * scale if scale != 1.0 else grad).to(core.dtype)

    def _backward_tile(self, image: Tensor, tile: Tile, factors: dict[str, Tensor], grad: Tensor,
                       scale: float = 1.0) -> None:
        """Pass 2 for one tile: add ``scale`` d(loss)/d(window) into ``grad`` (1, 3, H, W), halo included.

        Each used layer's core gets a surrogate whose backward hands it ``_core_grad``, computed only
        then from the core itself (``_Pull``): no layer's gradient waits, full-size, for the backward.
        """
        wanted = set(factors) | set(self.content_layers)

        def pull(name: str, feats: Tensor) -> Tensor | None:
            core = _core_features({name: feats}, tile, name)
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

    def _tv_grad(self, image: Tensor) -> Tensor:
        """d(tv weight * TV)/d(image) on the full image: TV is cheap and image-sized."""
        with torch.enable_grad():
            leaf = image.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.weights.tv * losses.tv_loss(leaf), leaf)
        return grad

    def _backward(self, image: Tensor, factors: dict[str, Tensor], scale: float) -> Tensor:
        """Pass 2 over every tile: the network's part of d(loss)/d(image), (1, 3, H, W) float32."""
        grad = torch.zeros_like(image, dtype=torch.float32)
        for tile in self.tiles:
            self._backward_tile(image, tile, factors, grad, scale)
        return grad.div_(scale) if scale != 1.0 else grad

    def loss(self, image: Tensor) -> LossTerms:
        """Loss terms only (pass 1): for reports and scores."""
        return self._terms(image, self._accumulate(image))

    def __call__(self, image: Tensor) -> LossTerms:
        """Loss terms, with d(total)/d(image) written to ``image.grad`` (both passes).

        With fp16 an overflow repeats pass 2 only, at half the loss scale: pass 1 has no backward.
        """
        totals = self._accumulate(image)
        terms = self._terms(image, totals)
        factors = self._style_factors(totals) if self.weights.style else {}
        grad = self.loss_scale.run(lambda scale: self._backward(image, factors, scale))
        if self.weights.tv > 0:
            grad += self._tv_grad(image)
        image.grad = grad
        return terms


# --------------------------------------------------------------------------- targets


@torch.no_grad()
def tiled_statistics(extractor: VGGFeatures, image: Tensor, tiles: Sequence[Tile], gram_layers: Sequence[str],
                     map_layers: Sequence[str], precision: Precision = FP32) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Position-averaged Grams (C, C) and whole feature maps (1, C, H >> k, W >> k), window by window.

    The same numbers as one untiled pass: a stage's content and style images are as large as the
    image being optimised, so their targets must not need the untiled activations either.
    """
    height, width = image.shape[-2:]
    sums: dict[str, Tensor] = {}
    areas: dict[str, int] = {}
    maps: dict[str, Tensor] = {}
    for tile in tiles:
        feats = precision.features(extractor, tile.window.crop(image))
        _add_grams(feats, tile, gram_layers, sums, areas, precision.low_precision_products(image.device))
        for name in map_layers:
            core = _core_features(feats, tile, name).float()
            if name not in maps:
                depth = POOLS_BEFORE[name]
                maps[name] = core.new_zeros((1, core.shape[1], height >> depth, width >> depth))
            tile.core.at_depth(POOLS_BEFORE[name]).crop(maps[name]).copy_(core)
    return {n: s / areas[n] for n, s in sums.items()}, maps


def make_tiled_targets(extractor: VGGFeatures, content: Tensor | None, styles: Sequence[Tensor],
                       blend: Sequence[float], weights: Weights, tile_size: int | None,
                       halo: int | None = None, precision: Precision = FP32) -> Targets:
    """``objective.make_targets``, with each image larger than one tile computed window by window."""
    if tile_size is None:
        return make_targets(extractor, content, styles, blend, weights, precision)
    _check_tileable(extractor)
    layers = list(dict.fromkeys([*weights.content_layers, *weights.style_layers]))
    halo = required_halo(layers, extractor.block_sizes) if halo is None else halo

    def tiles_for(image: Tensor) -> list[Tile]:
        return plan_tiles(image.shape[-1], image.shape[-2], tile_size, halo, align_for(layers))

    content_feats: dict[str, Tensor] = {}
    if content is not None and weights.content > 0 and weights.content_layers:
        _, content_feats = tiled_statistics(extractor, content, tiles_for(content), [], list(weights.content_layers),
                                            precision)
    per_style = [tiled_statistics(extractor, style, tiles_for(style), list(weights.style_layers), [], precision)[0]
                 for style in styles]
    style_grams = losses.blend_grams(per_style, list(blend) or [1.0] * len(styles))
    return Targets(content_feats, style_grams,
                   {n: t.square().sum() for n, t in content_feats.items()},
                   {n: t.square().sum() for n, t in style_grams.items()})


def make_objective(extractor: VGGFeatures, targets: Targets, weights: Weights, width: int, height: int,
                   tile_size: int | None, halo: int | None = None,
                   precision: Precision = FP32) -> Objective | TiledObjective:
    """The cheapest exact objective for a ``width`` x ``height`` image.

    Untiled when ``tile_size`` is None or one tile would cover the image (no second forward pass
    for small stages); otherwise tiled, with ``required_halo`` of the used layers unless ``halo``
    is given (a smaller halo trades exactness for speed).
    """
    if tile_size is None:
        return Objective(extractor, targets, weights, precision)
    _check_tileable(extractor)
    layers = used_layers(targets, weights)
    halo = required_halo(layers, extractor.block_sizes) if halo is None else halo
    tiles = plan_tiles(width, height, tile_size, halo, align_for(layers))
    if len(tiles) == 1:
        return Objective(extractor, targets, weights, precision)
    return TiledObjective(extractor, targets, weights, tiles, precision)


def _check_tileable(extractor: VGGFeatures) -> None:
    if not getattr(extractor, "tileable", False):
        raise ConfigError("tiling is exact only for VGG backbones; render ResNet backbones untiled")
