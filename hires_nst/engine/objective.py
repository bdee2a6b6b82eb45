"""The Gatys objective for one stage: targets, statistics, loss terms; the untiled objective.

Every objective (untiled here, tiled in ``tiling``, shared by the ranks in ``distributed``) computes
the same ``Statistics`` of the image (Gram sums, content errors, areas), whole or window by
window, and turns them into loss terms with the one function ``loss_terms``. The targets come
from the one builder ``make_targets``, whole or window by window.

An objective is called on the image being optimised and writes ``image.grad`` itself, so that the
optimiser never needs to know whether the gradient came from one autograd pass (``Objective``
here) or was assembled tile by tile.

Over 300 lines on purpose: targets, statistics and the one loss formula every objective shares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from hires_nst.config.catalog import POOLS_BEFORE, alias
from hires_nst.config.settings import LossConfig
from hires_nst.core import losses, matting
from hires_nst.core.guides import RegionGuide, guided_feature_sum, guided_gram_sum, layer_guides
from hires_nst.core.tiles import Tile, TileGrid
from hires_nst.errors import ConfigError
from hires_nst.model.backbones import FeatureExtractor
from hires_nst.runtime.placement import FP32, Precision

LossTerms = dict[str, Tensor]  # total, content, style, tv (and photo, when weighted): detached 0-d tensors


def config_style_loss() -> str:
    """The config's default --style-loss, read when weights are made: the one statement of it is
    ``LossConfig``'s (tests/conftest.py switches it to gram for speed, and so switches this too;
    weights made outside a test's own scope, as a module's fixture, say which loss they want)."""
    return LossConfig().style_loss


@dataclass(frozen=True)
class Weights:
    """Loss weights, with per-layer weights already normalised to sum 1."""

    content: float
    style: float
    tv: float
    content_layers: dict[str, float]
    style_layers: dict[str, float]
    # gram (Gatys et al.) or w2 (losses.w2_distance); STYLE_LOSSES. Not given: the config's default.
    style_loss: str = field(default_factory=config_style_loss)
    photo: float = 0.0  # photo mode's Matting Laplacian regulariser (core/matting.py); 0: off

    def __post_init__(self) -> None:
        # The extractor names its outputs convB_C; the config accepts reluB_C for the same tensor
        # and kept it as typed, so make_targets failed with a KeyError on 'relu4_2'. (Likewise
        # ResNet's layerB_K for the last block of layerB.)
        object.__setattr__(self, "content_layers", _canonical_keys(self.content_layers))
        object.__setattr__(self, "style_layers", _canonical_keys(self.style_layers))

    @property
    def needs_means(self) -> bool:
        """Whether the style loss reads the features' means (``Statistics.feature_sums``)."""
        return self.style_loss == "w2"

    @classmethod
    def equal_layers(cls, content: float, style: float, tv: float, content_layers: Sequence[str],
                     style_layers: Sequence[str], style_loss: str | None = None, photo: float = 0.0) -> Weights:
        # Canonical names first, so 'relu1_1' and 'conv1_1' count as the one layer they are.
        content_names = dict.fromkeys(alias(n) for n in content_layers)
        style_names = dict.fromkeys(alias(n) for n in style_layers)
        return cls(content, style, tv, losses.normalised_weights({n: 1.0 for n in content_names}),
                   losses.normalised_weights({n: 1.0 for n in style_names}), style_loss or config_style_loss(), photo)


def _canonical_keys(layer_weights: dict[str, float]) -> dict[str, float]:
    """``{reluB_C or convB_C: w}`` -> ``{convB_C: w}``, adding the weights of aliases."""
    out: dict[str, float] = {}
    for name, weight in layer_weights.items():
        conv = alias(name)
        out[conv] = out.get(conv, 0.0) + weight
    return out


@dataclass(frozen=True)
class Targets:
    """What the image is pulled towards at one stage."""

    content: dict[str, Tensor]  # layer -> (1, C, h, w) features of the content image
    style: dict[str, Tensor]  # layer -> (C, C) blended, position-averaged Gram of the styles
    content_norms: dict[str, Tensor]  # layer -> |P|^2
    style_norms: dict[str, Tensor]  # layer -> |A|^2
    w2: dict[str, losses.W2Target] = field(default_factory=dict)  # style layer -> Gaussian fit (--style-loss w2)
    # Regions (--mask / --region; guides.py): then ``style`` holds one Gram per region, (R, C, C),
    # ``style_norms`` (R,), and each style layer has its guide and its regions' shares of the term.
    guides: dict[str, Tensor] = field(default_factory=dict)  # style layer -> (R, h, w) guide at its resolution
    region_scale: dict[str, Tensor] = field(default_factory=dict)  # style layer -> (R,) weight x area share
    # Photo mode: the content's Matting Laplacian, whole (every rank and tiling applies it to the whole image).
    matting: matting.MattingGuide | None = None


@dataclass
class Statistics:
    """Pass 1 of an evaluation: the sums over the image that the loss needs, and nothing else.

    Sums, so that windows (``add_window``) and devices (``Statistics.total``) add theirs; the
    untiled objective makes one from a single window with autograd attached. With regions every
    style statistic has a leading region dimension: guide-weighted sums, and the guide's mass
    (a (R,) tensor) as the area.
    """

    gram_sums: dict[str, Tensor] = field(default_factory=dict)  # style layer -> (C, C) f32, sum of f f^T
    areas: dict[str, int | Tensor] = field(default_factory=dict)  # style layer -> positions summed (untiled H * W)
    content_errors: dict[str, Tensor] = field(default_factory=dict)  # content layer -> 0-d f32, sum (F - P)^2
    feature_sums: dict[str, Tensor] = field(default_factory=dict)  # style layer -> (C,) f32, sum of f (w2 only)

    def grams(self) -> dict[str, Tensor]:
        """Position-averaged Grams, (C, C) per style layer."""
        return {n: _per_position(s, self.areas[n]) for n, s in self.gram_sums.items()}

    def means(self) -> dict[str, Tensor]:
        """Position-averaged features, (C,) per style layer (only where ``feature_sums`` were taken)."""
        return {n: _per_position(s, self.areas[n]) for n, s in self.feature_sums.items()}

    @staticmethod
    def total(parts: Sequence[Statistics], device: torch.device) -> Statistics:
        """Per-device statistics summed on ``device``, in device order (deterministic)."""
        first = parts[0]
        gram_sums = {n: sum((p.gram_sums[n].to(device) for p in parts[1:]), first.gram_sums[n].to(device))
                     for n in first.gram_sums}
        areas = {n: sum((_on(p.areas[n], device) for p in parts[1:]), _on(first.areas[n], device)) for n in first.areas}
        errors = {n: sum((p.content_errors[n].to(device) for p in parts[1:]), first.content_errors[n].to(device))
                  for n in first.content_errors}
        means = {n: sum((p.feature_sums[n].to(device) for p in parts[1:]), first.feature_sums[n].to(device))
                 for n in first.feature_sums}
        return Statistics(gram_sums, areas, errors, means)


def _per_position(sums: Tensor, area: int | Tensor) -> Tensor:
    """Sums over positions divided by their area; per region (a (R,) mass) with regions."""
    if isinstance(area, Tensor):  # an empty region (none of it at this depth) has zero sums: keep them 0
        area = area.clamp_min(torch.finfo(torch.float32).tiny).reshape(area.shape + (1,) * (sums.dim() - area.dim()))
    return sums / area


def _on(area: int | Tensor, device: torch.device) -> int | Tensor:
    return area.to(device) if isinstance(area, Tensor) else area


def core_features(feats: dict[str, Tensor], tile: Tile | None, name: str) -> Tensor:
    """A layer's features at the tile's core, (1, C, h, w); ``tile`` None: the whole map."""
    if tile is None:
        return feats[name]
    rows, cols = tile.core_in_window(POOLS_BEFORE[name])
    return feats[name][:, :, rows, cols]


def content_target(targets: Targets, tile: Tile | None, name: str) -> Tensor:
    """The content features at the tile's core, cropped from the untiled target."""
    target = targets.content[name]
    return target if tile is None else tile.core.at_depth(POOLS_BEFORE[name]).crop(target)


def core_guide(targets: Targets, tile: Tile | None, name: str) -> Tensor:
    """A masked style layer's guide at the tile's core, (R, h, w): cropped like its features."""
    guide = targets.guides[name]
    return guide if tile is None else tile.core.at_depth(POOLS_BEFORE[name]).crop(guide)


def add_window(stats: Statistics, feats: dict[str, Tensor], tile: Tile | None, style_layers: Sequence[str],
               content_layers: Sequence[str] = (), targets: Targets | None = None, low: bool = False,
               means: bool = False) -> None:
    """Add one window's core (``tile`` None: the whole image) into ``stats``, per used layer.

    ``low``: Gram products of bf16/fp16 features as they are, summed in fp32 (CUDA; ``losses.gram_sum``).
    ``means``: also the feature sums (the Wasserstein style loss needs the features' means).
    With regions (``targets.guides``) every style sum is guided, one per region.
    """
    guided = targets.guides if targets is not None else {}
    for name in style_layers:
        core = core_features(feats, tile, name)  # (1, C, h, w)
        if name in guided:
            assert targets is not None
            guide = core_guide(targets, tile, name)
            _add(stats.gram_sums, name, guided_gram_sum(core, guide))
            if means:
                _add(stats.feature_sums, name, guided_feature_sum(core, guide))
            _add(stats.areas, name, guide.sum(dim=(-2, -1)))  # type: ignore[arg-type]
            continue
        _add(stats.gram_sums, name, losses.gram_sum(core, low))
        if means:
            _add(stats.feature_sums, name, losses.feature_sum(core))
        stats.areas[name] = stats.areas.get(name, 0) + core.shape[2] * core.shape[3]
    for name in content_layers:
        assert targets is not None
        error = losses.squared_error_sum(core_features(feats, tile, name), content_target(targets, tile, name))
        _add(stats.content_errors, name, error)


def _add(sums: dict[str, Tensor], name: str, part: Tensor) -> None:
    sums[name] = sums[name] + part if name in sums else part


def loss_terms(stats: Statistics, targets: Targets, weights: Weights, image: Tensor,
               style: Tensor | None = None, photo: Tensor | None = None) -> LossTerms:
    """The loss terms of every objective, from the statistics of the whole image (pass 1).

    Content: each layer's relative squared error; style: ``style_loss`` (w2 by default, the squared
    Wasserstein-2 distance of Gaussian fits, or gram, the relative Gram error); ``image`` gives the TV term.
    ``style``: the style term when the caller has it already (``tiling.style_factors`` computes
    it with its derivatives; the w2 term's square roots are the evaluation's dearest part).
    Photo mode (``weights.photo``): the Matting Laplacian regulariser of ``image``
    (``matting.regulariser``), or ``photo`` when the caller computed it with its gradient
    (``photo_term``); only then is there a ``photo`` term.
    """
    t, w = targets, weights
    zero = image.new_zeros((), dtype=torch.promote_types(image.dtype, torch.float32))
    content = sum((lw * (stats.content_errors[n] / t.content_norms[n])
                   for n, lw in w.content_layers.items() if n in t.content), zero)
    style = style_loss(stats, targets, weights, zero) if style is None else style
    tv = losses.tv_loss(image) if w.tv > 0 else zero
    if w.photo > 0 and photo is None:
        assert t.matting is not None
        photo = matting.regulariser(t.matting, image)
    return combine(w, content, style, tv, photo)


def photo_term(targets: Targets, weights: Weights, image: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """Photo mode's regulariser (before ``weights.photo``) and ``d(weights.photo * it)/d(image)``,
    from one ``L v`` on the whole image; (None, None) when off. Image-sized and O(N) like TV, so
    tiled and shared objectives compute it whole, on every rank: exact by construction."""
    if weights.photo <= 0:
        return None, None
    assert targets.matting is not None
    value, grad = matting.quadratic_and_gradient(targets.matting, image.detach())
    return value, grad.float().mul_(weights.photo)


def style_loss(stats: Statistics, targets: Targets, weights: Weights, zero: Tensor) -> Tensor:
    """The style term (before ``weights.style``) from the statistics: a function of the Gram
    and feature sums alone, so that ``tiling.style_factors`` can differentiate it with respect
    to them.

    ``gram``: each layer's relative squared Gram error. ``w2``: each layer's squared Wasserstein-2
    distance between Gaussian fits, relative to the target's ``E|f|^2`` (so that, like the Gram
    error, it is scale-free across layers and weight sources). With regions each region's
    relative error (Gram or w2, from its own guided statistics) counts by its weight times its share
    of the layer's positions (``Targets.region_scale``): one region over the whole image is the
    unmasked term.
    """
    t = targets
    grams = stats.grams()
    w2 = weights.style_loss == "w2"
    means = stats.means() if w2 else {}
    total = zero
    for n, lw in weights.style_layers.items():
        if w2:
            errors = losses.w2_distance(means[n], grams[n], t.w2[n]) / t.w2[n].norm  # () or per region (R,)
        elif n in t.region_scale:
            errors = (grams[n] - t.style[n]).square().sum(dim=(-2, -1)) / t.style_norms[n]
        else:
            errors = losses.relative_error(grams[n], t.style[n], t.style_norms[n])
        if n in t.region_scale:
            errors = t.region_scale[n] * errors
        total = total + lw * errors.sum()
    return total


def combine(weights: Weights, content: Tensor, style: Tensor, tv: Tensor, photo: Tensor | None = None) -> LossTerms:
    total = weights.content * content + weights.style * style + weights.tv * tv
    if photo is None:
        return {"total": total, "content": content, "style": style, "tv": tv}
    photo = photo.to(total.dtype)
    return {"total": total + weights.photo * photo, "content": content, "style": style, "tv": tv, "photo": photo}


def require_tileable(extractor: FeatureExtractor, windows: int) -> None:
    """The engine's one guard: more than one window is exact only for VGG (the rules of core/tiles.py)."""
    if windows > 1 and not getattr(extractor, "tileable", False):
        raise ConfigError("tiling is exact only for VGG backbones; render ResNet backbones untiled")


@torch.no_grad()
def window_statistics(extractor: FeatureExtractor, image: Tensor, tiles: Sequence[Tile | None],
                      style_layers: Sequence[str], precision: Precision = FP32, means: bool = False) -> Statistics:
    """Pass 1 over ``tiles`` (``[None]``: one whole-image pass) for the Grams of ``style_layers``
    (``means``: and their feature sums)."""
    require_tileable(extractor, len(tiles))
    stats = Statistics()
    low = precision.low_precision_products(image.device)
    for tile in tiles:
        crop = image if tile is None else tile.window.crop(image)
        add_window(stats, precision.features(extractor, crop), tile, style_layers, low=low, means=means)
    return stats


@torch.no_grad()
def feature_maps(extractor: FeatureExtractor, image: Tensor, tiles: Sequence[Tile | None], layers: Sequence[str],
                 precision: Precision = FP32) -> dict[str, Tensor]:
    """Whole feature maps (1, C, H >> k, W >> k) in float32, assembled from the windows' cores."""
    require_tileable(extractor, len(tiles))
    if tiles == [None]:
        feats = precision.features(extractor, image)
        return {n: feats[n].float().contiguous() for n in layers}
    height, width = image.shape[-2:]
    maps: dict[str, Tensor] = {}
    for tile in tiles:
        assert tile is not None
        feats = precision.features(extractor, tile.window.crop(image))
        for name in layers:
            core, depth = core_features(feats, tile, name).float(), POOLS_BEFORE[name]
            if name not in maps:
                maps[name] = core.new_zeros((1, core.shape[1], height >> depth, width >> depth))
            tile.core.at_depth(depth).crop(maps[name]).copy_(core)
    return maps


@torch.no_grad()
def make_targets(extractor: FeatureExtractor, content: Tensor | None, styles: Sequence[Tensor],
                 blend: Sequence[float], weights: Weights, precision: Precision = FP32,
                 grid: TileGrid | None = None, regions: RegionGuide | None = None) -> Targets:
    """Content features and blended style Grams; each style image is used at its own size.

    With ``regions`` there is no blend: region ``r`` is pulled towards the Grams of
    ``styles[regions.styles[r]]``, within its guide.

    Photo mode (``weights.photo``): the content's Matting Laplacian guide, at the stage's size.

    Under the same ``precision`` as the optimisation, so that a perfect match scores zero. With a
    ``grid`` every image is cut like the stage (its own windows): a stage's content and style
    images are as large as the image optimised, so their targets must not need more memory either.
    """
    def tiles(image: Tensor) -> list[Tile | None]:
        return [None] if grid is None or grid.tile is None else list(grid.tiles(image.shape[-1], image.shape[-2]))

    content_feats: dict[str, Tensor] = {}
    if content is not None and weights.content > 0 and weights.content_layers:
        content_feats = feature_maps(extractor, content, tiles(content), list(weights.content_layers), precision)
    per_style = [window_statistics(extractor, style, tiles(style), list(weights.style_layers), precision,
                                   weights.needs_means) for style in styles]
    w2: dict[str, losses.W2Target] = {}
    guides: dict[str, Tensor] = {}
    scale: dict[str, Tensor] = {}
    if regions is None:
        blend = list(blend) or [1.0] * len(styles)
        style_grams = losses.blend_grams([s.grams() for s in per_style], blend)
        if weights.needs_means:  # the styles' mixture: its mean and E[f f^T] are the blends of theirs
            style_means = losses.blend_grams([s.means() for s in per_style], blend)
            w2 = {n: losses.w2_target(style_means[n], style_grams[n]) for n in style_grams}
    else:
        grams = [s.grams() for s in per_style]
        style_grams = {n: torch.stack([grams[i][n] for i in regions.styles]) for n in weights.style_layers}
        if weights.needs_means:  # one Gaussian fit per region, of its own painting
            means = [s.means() for s in per_style]
            w2 = {n: losses.w2_target(torch.stack([means[i][n] for i in regions.styles]), style_grams[n])
                  for n in weights.style_layers}
        guides = layer_guides(regions.guide, list(weights.style_layers))
        region_weights = torch.tensor(regions.weights, dtype=torch.float32, device=regions.guide.device)
        scale = {n: region_weights * g.sum(dim=(-2, -1)) / max(1, g.shape[-2] * g.shape[-1]) for n, g in guides.items()}
    guide = matting.matting_guide(content.float()) if content is not None and weights.photo > 0 else None
    return Targets(content_feats, style_grams,
                   {n: t.square().sum() for n, t in content_feats.items()},
                   {n: t.square().sum(dim=(-2, -1)) for n, t in style_grams.items()}, w2, guides, scale, guide)


class Objective:
    """Untiled loss and gradient: one VGG pass over the whole image."""

    def __init__(self, extractor: FeatureExtractor, targets: Targets, weights: Weights,
                 precision: Precision = FP32) -> None:
        self.extractor, self.targets, self.weights = extractor, targets, weights
        self.precision, self.loss_scale = precision, precision.loss_scale()
        self.content_layers = [n for n in weights.content_layers if n in targets.content]

    def _terms(self, image: Tensor) -> LossTerms:
        stats = Statistics()
        low = self.precision.low_precision_products(image.device)
        style, content = set(self.weights.style_layers), set(self.content_layers)

        def take(name: str, feats: Tensor) -> None:
            # At the layer, as the network runs (FrozenExtractor.forward says why).
            add_window(stats, {name: feats}, None, [name] if name in style else [],
                       [name] if name in content else [], self.targets, low, self.weights.needs_means)

        self.precision.features(self.extractor, image, reduce=take)
        return loss_terms(stats, self.targets, self.weights, image)

    @torch.no_grad()
    def loss(self, image: Tensor) -> LossTerms:
        """Loss terms only (no gradient): for reports and scores."""
        return self._terms(image)

    def __call__(self, image: Tensor) -> LossTerms:
        """Loss terms, with d(total)/d(image) written to ``image.grad``."""
        out: dict[str, LossTerms] = {}

        def backward(scale: float) -> Tensor:
            # fp16: an overflow re-runs the whole evaluation at half the scale (LossScale).
            with torch.enable_grad():
                leaf = image.detach().requires_grad_(True)
                terms = self._terms(leaf)
                total = terms["total"] * scale if scale != 1.0 else terms["total"]
                (grad,) = torch.autograd.grad(total, leaf)
            out["terms"] = terms
            # Channels-last inputs give a channels-last gradient; L-BFGS flattens it with view().
            grad = grad.contiguous()
            return grad / scale if scale != 1.0 else grad

        image.grad = self.loss_scale.run(backward)
        return {k: v.detach() for k, v in out["terms"].items()}
