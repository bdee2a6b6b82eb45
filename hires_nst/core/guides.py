"""Guided Gram matrices (Gatys et al. 2017, spatial control): the numbers, apart from files.

A region ``r`` has a guide ``m_r(p)`` in [0, 1] per position. Its Gram is the guide-weighted
average ``G_r = sum_p m_r(p) f f^T / sum_p m_r(p)``: the guide itself, not its square as in the
paper, so that soft levels are plain weights and guides that add up to one split every
position's contribution between regions. Like the unguided Gram it is a sum over positions,
so tiles and ranks add theirs (``tiling``, ``distributed``), and its gradient at a position is
``m_r(p) (dL/dG_r + dL/dG_r^T) f(p) / sum m_r``: linear in the position's own features.

The guide reaches every layer as the network's grid does: one 2x2 average per pooling, floored
like VGG's pools (``catalog.POOLS_BEFORE`` gives each layer's depth), so a tile's core crops its
guide with the same ``Rect`` as its features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hires_nst.config.catalog import POOLS_BEFORE
from hires_nst.config.regionspec import Colour, hex_colour
from hires_nst.errors import ConfigError

# A pixel this close to a named colour (Euclidean, 0-255 RGB) is that colour: JPEG noise.
COLOUR_TOLERANCE = 48
# Pixels far from every named colour and from the lines between them: a region nobody named when
# one colour of them (4-bit bins) covers this share of the mask; fewer are stray pixels.
UNNAMED_SHARE = 0.002
WIDEN_CHUNK = 2**20  # positions per slice of a widened product (losses.WIDEN_CHUNK says why)


@dataclass(frozen=True)
class RegionGuide:
    """A stage's styled regions: their guide at the stage's size and what each region asks for."""

    guide: Tensor  # (R, H, W) float32 in [0, 1], on the stage's device
    styles: tuple[int, ...]  # region r's style: the index of one of the stage's style images
    weights: tuple[float, ...]  # region r's weight in the style term


def colour_guides(mask: np.ndarray, colours: Sequence[Colour], tolerance: int = COLOUR_TOLERANCE) -> np.ndarray:
    """(H, W, 3) RGB mask in [0, 1] -> (K, H, W) float32 guides, one per colour of ``colours``.

    A pixel within ``tolerance`` of a colour is that colour (JPEG noise). One between two colours
    (within ``tolerance`` of the line joining them: an antialiased edge, a soft brush) is shared
    between them in proportion, so soft edges are weights. ConfigError naming the colours of the
    mask that are neither (more than ``UNNAMED_SHARE`` of it in one colour); a few such stray
    pixels go to their nearest colour.
    """
    height, width = mask.shape[:2]
    pixels = np.rint(mask.reshape(-1, 3) * 255).astype(np.float32)
    palette = np.asarray(colours, dtype=np.float32)
    distance = np.stack([np.square(pixels - c).sum(axis=1) for c in palette])  # (K, N)
    nearest = distance.argmin(axis=0)
    guides = np.zeros((len(colours), height * width), dtype=np.float32)
    guides[nearest, np.arange(len(pixels))] = 1.0
    far = np.flatnonzero(distance.min(axis=0) > tolerance ** 2)
    if len(far):
        between = _share_between(guides, pixels, far, palette, tolerance)
        _check_unnamed(pixels[far[~between]].astype(np.int32), len(pixels), colours)
    return guides.reshape(len(colours), height, width)


def _share_between(guides: np.ndarray, pixels: np.ndarray, far: np.ndarray, palette: np.ndarray,
                   tolerance: int) -> np.ndarray:
    """Give each ``far`` pixel that lies between two colours its share of both (in ``guides``);
    True where it did."""
    best = np.full(len(far), np.inf, dtype=np.float32)
    shares = np.zeros((len(far), 3), dtype=np.float32)  # (a, b, t)
    points = pixels[far]
    for a in range(len(palette)):
        for b in range(a + 1, len(palette)):
            step = palette[b] - palette[a]
            t = np.clip((points - palette[a]) @ step / max(float(step @ step), 1.0), 0.0, 1.0)
            gap = np.square(points - (palette[a] + t[:, None] * step)).sum(axis=1)
            closer = gap < best
            best[closer], shares[closer] = gap[closer], np.stack([np.full(len(t), a), np.full(len(t), b), t], 1)[closer]
    between = best <= tolerance ** 2
    rows = far[between]
    a, b, t = shares[between, 0].astype(int), shares[between, 1].astype(int), shares[between, 2]
    guides[:, rows] = 0.0
    guides[a, rows] = 1.0 - t
    guides[b, rows] = t
    return between


def _check_unnamed(far: np.ndarray, total: int, colours: Sequence[Colour]) -> None:
    if not len(far):
        return
    bins, inverse, counts = np.unique(far >> 4, axis=0, return_inverse=True, return_counts=True)
    big = [b for b in np.argsort(-counts) if counts[b] >= max(4, UNNAMED_SHARE * total)]
    if not big:
        return
    found = []
    for b in big[:6]:
        members = far[inverse.reshape(-1) == b]
        values, many = np.unique(members, axis=0, return_counts=True)
        red, green, blue = (int(v) for v in values[np.argmax(many)])
        found.append(f"{hex_colour((red, green, blue))} ({100 * counts[b] / total:.1f}%)")
    named = ", ".join(hex_colour(c) for c in colours)
    raise ConfigError(f"the --mask has colours that match no --region: {', '.join(found)}"
                      f"{' and more' if len(big) > 6 else ''}; the regions name {named} (give each colour a "
                      "--region, COLOUR=photo to keep the photo there)")


def grey_guide(mask: np.ndarray) -> np.ndarray:
    """(H, W, 3) mask in [0, 1] -> (H, W) float32 weights: its grey level (Rec. 601 luma)."""
    return np.ascontiguousarray(mask @ np.array([0.299, 0.587, 0.114], dtype=np.float32), dtype=np.float32)


def resize_guides(guides: np.ndarray, width: int, height: int) -> np.ndarray:
    """(R, H, W) -> (R, height, width): area averaging when shrinking (so edges go soft, as the
    pyramid's content does), bilinear when enlarging; clipped to [0, 1]."""
    count, old_h, old_w = guides.shape
    if (old_w, old_h) == (width, height):
        return guides
    interpolation = cv2.INTER_AREA if width * height < old_w * old_h else cv2.INTER_LINEAR
    out = np.empty((count, height, width), dtype=np.float32)
    for r in range(count):
        out[r] = cv2.resize(guides[r], (width, height), interpolation=interpolation)
    return np.clip(out, 0.0, 1.0, out=out)


def at_depth(guide: Tensor, depth: int) -> Tensor:
    """(R, H, W) -> (R, H >> depth, W >> depth): 2x2 averages, floored like the network's pools."""
    for _ in range(depth):
        guide = F.avg_pool2d(guide.unsqueeze(0), 2).squeeze(0)
    return guide


def layer_guides(guide: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
    """Each layer's guide, (R, h, w) at its resolution, from the stage-sized (R, H, W) guide."""
    by_depth: dict[int, Tensor] = {}
    current, depth_now = guide, 0
    for depth in sorted({POOLS_BEFORE[n] for n in layers}):
        current, depth_now = at_depth(current, depth - depth_now), depth
        by_depth[depth] = current
    return {n: by_depth[POOLS_BEFORE[n]].float().contiguous() for n in layers}


def _wide(tensor: Tensor) -> Tensor:
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class _GuidedGramSum(torch.autograd.Function):
    """``sum_p m_r(p) f f^T`` for every region, (R, C, C); keeps only F and the guide for backward.

    Features are widened to fp32 in slices of ``WIDEN_CHUNK`` positions, as ``losses._GramSum`` does.
    """

    @staticmethod
    def forward(ctx: Any, flat: Tensor, guide: Tensor) -> Tensor:
        ctx.save_for_backward(flat, guide)
        channels = flat.shape[0]
        total = flat.new_zeros((guide.shape[0], channels, channels),
                               dtype=torch.promote_types(flat.dtype, torch.float32))
        for part, weights in zip(torch.split(flat, WIDEN_CHUNK, dim=1), torch.split(guide, WIDEN_CHUNK, dim=1),
                                 strict=True):
            wide = _wide(part)
            for r in range(guide.shape[0]):
                total[r].addmm_(wide * weights[r].to(wide.dtype), wide.T)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        flat, guide = ctx.saved_tensors
        factor = grad + grad.transpose(-2, -1)
        out = torch.empty_like(flat)
        for part, weights, into in zip(torch.split(flat, WIDEN_CHUNK, dim=1), torch.split(guide, WIDEN_CHUNK, dim=1),
                                       torch.split(out, WIDEN_CHUNK, dim=1), strict=True):
            wide = _wide(part)
            # at least one region, so the sum is a tensor
            into.copy_(cast(Tensor, sum(weights[r].to(wide.dtype) * (factor[r].to(wide.dtype) @ wide)
                                        for r in range(len(weights)))))
        return out, None


def guided_gram_sum(features: Tensor, guide: Tensor) -> Tensor:
    """(1, C, h, w) features and (R, h, w) guide -> (R, C, C) guided Gram sums, fp32 or wider."""
    _, channels, height, width = features.shape
    return cast(Tensor, _GuidedGramSum.apply(features.reshape(channels, height * width),
                                             guide.reshape(guide.shape[0], -1)))


def guided_feature_sum(features: Tensor, guide: Tensor) -> Tensor:
    """(1, C, h, w), (R, h, w) -> (R, C): ``sum_p m_r(p) f(p)``."""
    channels = features.shape[1]
    flat = _wide(features.reshape(channels, -1))
    return guide.reshape(guide.shape[0], -1).to(flat.dtype) @ flat.T


def guided_gradient(matrix: Tensor, offset: Tensor | None, core: Tensor, guide: Tensor) -> Tensor:
    """``sum_r m_r(p) (matrix_r @ f(p) + offset_r)``: a masked layer's dL/dF, (1, C, h, w) fp32.

    ``matrix`` (R, C, C), ``offset`` (R, C) or None, ``core`` (1, C, h, w), ``guide`` (R, h, w).
    """
    channels = core.shape[1]
    flat = core.float().reshape(channels, -1)
    weights = guide.reshape(guide.shape[0], -1).float()
    grad = torch.zeros_like(flat)
    for r in range(weights.shape[0]):
        part = matrix[r] @ flat
        if offset is not None:
            part += offset[r].reshape(channels, 1)
        grad.addcmul_(part, weights[r].reshape(1, -1))
    return grad.reshape(core.shape)
