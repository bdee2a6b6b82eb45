"""Gatys et al. losses as pure functions on tensors.

Normalisation (our choice, documented in the README):

* Gram matrices are averaged over positions, ``G = F F^T / (H W)``, so the same texture gives the
  same Gram at any image size.
* Every layer's loss is a *relative* squared error: ``|G - A|^2 / |A|^2`` for style and
  ``|F - P|^2 / |P|^2`` for content. The scale of the activations then drops out, so one set of
  default weights works across image sizes, across layers (conv1_1 responses are much smaller
  than conv5_1's) and across weight sources (Caffe 0..255 inputs vs torchvision's normalised ones).
  The paper's per-layer ``1 / (4 N^2 M^2)`` factors serve the same purpose for one network and
  one size; the relative form keeps them fixed for all.

Tiling needs the un-normalised sums (``gram_sum``, ``squared_error_sum``) so that tiles can add
into global totals; the normalised functions are those sums divided once.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import Tensor


def _wide(tensor: Tensor) -> Tensor:
    """At least float32: bf16/fp16 activations are widened; float64 (references, gradchecks) is kept."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class _GramSum(torch.autograd.Function):
    """``F F^T`` of ``F`` (C, N) in float32 or wider, keeping only ``F`` itself for the backward pass.

    Plain autograd would keep the widened float32 copy of every bf16 style layer until the
    backward pass: 8 GB at 4096 x 4096 on top of the network's own bf16 activations, which hold the
    same numbers. The gradient ``(G' + G'^T) F`` is recomputed from those instead.
    """

    @staticmethod
    def forward(ctx, flat: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(flat)
        wide = _wide(flat)
        return wide @ wide.T

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (flat,) = ctx.saved_tensors
        return ((grad + grad.T) @ _wide(flat)).to(flat.dtype)


def gram_sum(features: Tensor) -> Tensor:
    """Sum over positions of f f^T. (1, C, H, W) -> (C, C), accumulated in float32 or wider."""
    if features.dim() != 4 or features.shape[0] != 1:
        raise ValueError(f"gram needs one feature map (1, C, H, W), got shape {tuple(features.shape)}")
    _, channels, height, width = features.shape
    return _GramSum.apply(features.reshape(channels, height * width))


def gram(features: Tensor) -> Tensor:
    """Position-averaged Gram matrix. (1, C, H, W) -> (C, C)."""
    _, _, height, width = features.shape
    return gram_sum(features) / (height * width)


def squared_error_sum(value: Tensor, target: Tensor) -> Tensor:
    """``|value - target|^2`` (a scalar, float32 or wider): tiles add theirs into one total."""
    return (_wide(value) - _wide(target)).square().sum()


def relative_error(value: Tensor, target: Tensor, target_norm: Tensor | float | None = None) -> Tensor:
    """``|value - target|^2 / |target|^2`` (a scalar); ``target_norm`` may be passed precomputed."""
    if target_norm is None:
        target_norm = _wide(target).square().sum()
    return squared_error_sum(value, target) / target_norm


def blend_grams(per_style: Sequence[Mapping[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    """Blend the Gram targets of several style images by ``weights`` (normalised to sum 1).

    Blending the targets (as neural-style does) rather than summing per-style losses asks for one
    texture whose statistics lie between the styles, not a compromise between separate fits.
    """
    if len(per_style) != len(weights):
        raise ValueError(f"{len(per_style)} styles but {len(weights)} blend weights")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"blend weights must be >= 0 with a positive sum, got {list(weights)}")
    layers = per_style[0].keys()
    return {name: sum((w / total) * grams[name] for grams, w in zip(per_style, weights)) for name in layers}


def tv_loss(image: Tensor) -> Tensor:
    """Total variation: mean squared difference of neighbouring pixels. (1, 3, H, W) -> scalar."""
    dx = image[..., :, 1:] - image[..., :, :-1]
    dy = image[..., 1:, :] - image[..., :-1, :]
    return dx.square().mean() + dy.square().mean()


def normalised_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Scale layer weights to sum to 1, so the number of layers does not change the balance."""
    total = float(sum(weights.values()))
    if weights and (total <= 0 or any(w < 0 for w in weights.values())):
        raise ValueError(f"layer weights must be >= 0 with a positive sum, got {dict(weights)}")
    return {name: w / total for name, w in weights.items()}
