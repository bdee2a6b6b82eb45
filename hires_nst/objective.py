"""The Gatys objective for one stage: targets, and loss with gradient with respect to the image.

An objective is called on the image being optimised and writes ``image.grad`` itself, so that the
optimiser never needs to know whether the gradient came from one autograd pass (``Objective``
here) or was assembled tile by tile.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from hires_nst import losses
from hires_nst.backbones import FeatureExtractor, alias
from hires_nst.placement import FP32, Precision

LossTerms = dict[str, Tensor]  # total, content, style, tv: detached 0-d tensors


@dataclass(frozen=True)
class Weights:
    """Loss weights, with per-layer weights already normalised to sum 1."""

    content: float
    style: float
    tv: float
    content_layers: dict[str, float]
    style_layers: dict[str, float]

    def __post_init__(self) -> None:
        # The extractor names its outputs convB_C; the config accepts reluB_C for the same tensor
        # and kept it as typed, so make_targets failed with a KeyError on 'relu4_2'. (Likewise
        # ResNet's layerB_K for the last block of layerB.)
        object.__setattr__(self, "content_layers", _canonical_keys(self.content_layers))
        object.__setattr__(self, "style_layers", _canonical_keys(self.style_layers))

    @classmethod
    def equal_layers(cls, content: float, style: float, tv: float,
                     content_layers: Sequence[str], style_layers: Sequence[str]) -> "Weights":
        # Canonical names first, so 'relu1_1' and 'conv1_1' count as the one layer they are.
        content_names = dict.fromkeys(alias(n) for n in content_layers)
        style_names = dict.fromkeys(alias(n) for n in style_layers)
        return cls(content, style, tv, losses.normalised_weights({n: 1.0 for n in content_names}),
                   losses.normalised_weights({n: 1.0 for n in style_names}))


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


@torch.no_grad()
def make_targets(extractor: FeatureExtractor, content: Tensor | None, styles: Sequence[Tensor],
                 blend: Sequence[float], weights: Weights, precision: Precision = FP32) -> Targets:
    """Content features and blended style Grams; each style image is used at its own size.

    Under the same ``precision`` as the optimisation, so that a perfect match scores zero.
    """
    content_feats = {}
    if content is not None and weights.content > 0 and weights.content_layers:
        feats = precision.features(extractor, content)
        content_feats = {n: feats[n].float().contiguous() for n in weights.content_layers}
    per_style = []
    for style in styles:
        feats = precision.features(extractor, style)
        low = precision.low_precision_products(style.device)
        per_style.append({n: losses.gram(feats[n], low) for n in weights.style_layers})
    style_grams = losses.blend_grams(per_style, list(blend) or [1.0] * len(styles))
    return Targets(content_feats, style_grams,
                   {n: t.square().sum() for n, t in content_feats.items()},
                   {n: t.square().sum() for n, t in style_grams.items()})


def combine(weights: Weights, content: Tensor, style: Tensor, tv: Tensor) -> LossTerms:
    total = weights.content * content + weights.style * style + weights.tv * tv
    return {"total": total, "content": content, "style": style, "tv": tv}


class Objective:
    """Untiled loss and gradient: one VGG pass over the whole image."""

    def __init__(self, extractor: FeatureExtractor, targets: Targets, weights: Weights,
                 precision: Precision = FP32) -> None:
        self.extractor, self.targets, self.weights = extractor, targets, weights
        self.precision, self.loss_scale = precision, precision.loss_scale()

    def _terms(self, image: Tensor) -> LossTerms:
        t, w = self.targets, self.weights
        low = self.precision.low_precision_products(image.device)

        def layer_terms(name: str, feats: Tensor) -> tuple[Tensor | None, Tensor | None]:
            # Taken as the network reaches the layer (FrozenExtractor.forward): see there why.
            content = style = None
            if name in w.content_layers and name in t.content:
                content = w.content_layers[name] * losses.relative_error(feats, t.content[name], t.content_norms[name])
            if name in w.style_layers:
                style = w.style_layers[name] * losses.relative_error(losses.gram(feats, low), t.style[name],
                                                                     t.style_norms[name])
            return content, style

        parts = self.precision.features(self.extractor, image, reduce=layer_terms)
        zero = image.new_zeros(())
        content = sum((parts[n][0] for n in w.content_layers if n in t.content), zero)
        style = sum((parts[n][1] for n in w.style_layers), zero)
        tv = losses.tv_loss(image) if w.tv > 0 else zero
        return combine(w, content, style, tv)

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
