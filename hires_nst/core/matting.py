"""The Matting Laplacian (Levin et al. 2008) applied by box filters, never built as a matrix.

Photo mode (Luan et al. 2017, "Deep Photo Style Transfer") adds ``sum_c v_c^T L v_c`` to the loss:
``L`` is the Matting Laplacian of the content photo and ``v_c`` a channel of the image being
optimised. It is zero exactly where every 3x3 window of the output is an affine function of the
photo's colours there, so lines stay lines and no brush texture survives. The published code
builds ``L`` as a sparse N x N matrix (25 entries a row for 3x3 windows); here ``L v`` is computed
from box filters (He et al. 2010, "Fast Matting Using Large Kernel Matting Laplacian Matrices"),
O(N) and on any device. For windows ``k`` of ``|w|`` pixels with colour mean ``mu_k`` and
covariance ``S_k``, ``D_k = (S_k + eps/|w| I)^-1``:

    L_ij = sum_{k : i, j in w_k} (delta_ij - (1 + (I_i - mu_k)^T D_k (I_j - mu_k)) / |w|)
    (L v)_i = n_i v_i - sum_{k : i in w_k} (a_k^T I_i + b_k),
    a_k = D_k cov_k(I, v),   b_k = mean_k(v) - a_k^T mu_k

where ``n_i`` counts the windows that hold pixel ``i``. As in Levin's code, only windows wholly
inside the image count (no padding): at the border a pixel is in fewer windows.

Each output pixel depends only on pixels within ``2 * radius`` of it, so ``apply`` works in row
bands with that halo (exact, and its buffers stay band-sized at print sizes). The products run in
float64: with eps ~1e-7 ``D_k`` reaches ~1e8 in flat windows, and ``cov_k(I, v) = mean(I v) -
mu mean(v)`` cancels in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

# Luan et al.'s code (gen_laplacian.m): getLaplacian1(input, zeros, 1e-7, 1): eps 1e-7, radius 1 (3x3).
PAPER_EPSILON = 1e-7
PAPER_RADIUS = 1
COMPUTE_DTYPE = torch.float64
BAND_PIXELS = 1 << 20  # pixels per band of ``apply``: ~100 MB of float64 buffers at a time


@dataclass(frozen=True)
class MattingGuide:
    """What ``L`` needs of the content photo, computed once per stage: its colours, and each
    window's mean and inverse regularised covariance (window ``k`` named by its top-left pixel)."""

    image: Tensor  # (3, H, W) the photo, in [0, 1]
    mean: Tensor  # (3, H - 2r, W - 2r) mu_k
    inverse: Tensor  # (3, 3, H - 2r, W - 2r) D_k = (S_k + eps/|w| I)^-1
    radius: int = PAPER_RADIUS

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[-2], self.image.shape[-1]

    def rows(self, top: int, bottom: int) -> MattingGuide:
        """The guide of the image's rows [top, bottom): that strip's own windows (all inside it)."""
        last = bottom - 2 * self.radius
        return MattingGuide(self.image[:, top:bottom], self.mean[:, top:last], self.inverse[..., top:last, :],
                            self.radius)


def _box_mean(x: Tensor, radius: int) -> Tensor:
    """Mean over every (2r+1)^2 window wholly inside the image: (C, H, W) -> (C, H - 2r, W - 2r)."""
    return F.avg_pool2d(x.unsqueeze(0), 2 * radius + 1, stride=1).squeeze(0)


def _window_sum(x: Tensor, radius: int) -> Tensor:
    """For each pixel, the sum of ``x`` over the windows that hold it: the adjoint of a box sum.
    (C, H - 2r, W - 2r) -> (C, H, W)."""
    side = 2 * radius + 1
    ones = x.new_ones((x.shape[0], 1, side, side))
    return F.conv_transpose2d(x.unsqueeze(0), ones, groups=x.shape[0]).squeeze(0)


def matting_guide(content: Tensor, epsilon: float = PAPER_EPSILON, radius: int = PAPER_RADIUS) -> MattingGuide:
    """The guide of ``content`` (1, 3, H, W) or (3, H, W): window means and inverse covariances,
    computed in float64, kept in the content's dtype. H and W must exceed ``2 * radius``."""
    image = content.reshape(content.shape[-3:])
    wide = image.to(COMPUTE_DTYPE)
    area = (2 * radius + 1) ** 2
    mean = _box_mean(wide, radius)  # (3, h, w)
    products = _box_mean((wide.unsqueeze(0) * wide.unsqueeze(1)).flatten(0, 1), radius)  # (9, h, w)
    cov = products.reshape(3, 3, *products.shape[1:]) - mean.unsqueeze(0) * mean.unsqueeze(1)  # (3, 3, h, w)
    eye = torch.eye(3, dtype=COMPUTE_DTYPE, device=image.device)
    regularised = cov.permute(2, 3, 0, 1) + (epsilon / area) * eye  # (h, w, 3, 3)
    inverse = torch.linalg.inv(regularised).permute(2, 3, 0, 1)
    return MattingGuide(image, mean.to(image.dtype), inverse.to(image.dtype).contiguous(), radius)


def _apply_strip(guide: MattingGuide, v: Tensor) -> Tensor:
    """``L v`` for one strip whose guide holds exactly its windows; (C, h, w) -> (C, h, w), float64."""
    r = guide.radius
    image = guide.image.to(COMPUTE_DTYPE)  # (3, h, w)
    mean, inverse = guide.mean.to(COMPUTE_DTYPE), guide.inverse.to(COMPUTE_DTYPE)
    v = v.to(COMPUTE_DTYPE)
    channels = v.shape[0]
    v_mean = _box_mean(v, r)  # (C, h', w')
    iv_mean = _box_mean((image.unsqueeze(1) * v.unsqueeze(0)).flatten(0, 1), r)
    iv_mean = iv_mean.reshape(3, channels, *iv_mean.shape[1:])  # (3, C, h', w'): mean_k(I_m v_c)
    cov = iv_mean - mean.unsqueeze(1) * v_mean.unsqueeze(0)  # (3, C, h', w'): cov_k(I_m, v_c)
    a = (inverse.unsqueeze(2) * cov.unsqueeze(0)).sum(1)  # (3, C, h', w'): D_k cov_k
    b = v_mean - (a * mean.unsqueeze(1)).sum(0)  # (C, h', w')
    a_sum = _window_sum(a.flatten(0, 1), r).reshape(3, channels, *v.shape[1:])  # (3, C, h, w)
    counts = _window_sum(torch.ones_like(v_mean[:1]), r)  # (1, h, w): n_i
    lv: Tensor = counts * v - (image.unsqueeze(1) * a_sum).sum(0) - _window_sum(b, r)
    return lv


def apply(guide: MattingGuide, v: Tensor, band_pixels: int = BAND_PIXELS) -> Tensor:
    """``L v`` for every channel of ``v`` ((C, H, W) or (1, C, H, W), shaped and typed as given).

    In row bands of about ``band_pixels`` pixels, each computed from its rows plus ``2 * radius``
    rows either side: a pixel's ``(L v)`` reads nothing farther, so the bands give the whole
    image's ``L v`` exactly while their buffers stay small.
    """
    height, width = guide.size
    if v.shape[-2:] != (height, width):
        raise ValueError(f"v is {tuple(v.shape[-2:])}, the guide's image {(height, width)}")
    flat = v.reshape(v.shape[-3:])
    halo, step = 2 * guide.radius, max(1, band_pixels // max(1, width))
    out = torch.empty_like(flat)
    for top in range(0, height, step):
        bottom = min(top + step, height)
        first, last = max(0, top - halo), min(height, bottom + halo)
        strip = _apply_strip(guide.rows(first, last), flat[:, first:last])
        out[:, top:bottom] = strip[:, top - first:bottom - first].to(out.dtype)
    return out.reshape(v.shape)


def quadratic_and_gradient(guide: MattingGuide, image: Tensor) -> tuple[Tensor, Tensor]:
    """``sum_c v_c^T L v_c / N`` (0-d) and its gradient ``2 L v / N`` (shaped like ``image``), from
    ONE ``L v``: the photo-mode regulariser of an (1, 3, H, W) image of N pixels. Dividing by N
    makes it the same size at every pyramid stage."""
    pixels = image.shape[-1] * image.shape[-2]
    lv = apply(guide, image.detach())
    value = (image.detach().to(COMPUTE_DTYPE) * lv.to(COMPUTE_DTYPE)).sum() / pixels
    return value.to(torch.promote_types(image.dtype, torch.float32)), lv.mul_(2.0 / pixels)


class _Regulariser(torch.autograd.Function):
    """``quadratic_and_gradient`` as an autograd function: its backward is the gradient the
    forward found already (L is symmetric), so an autograd objective pays one ``L v``."""

    @staticmethod
    def forward(ctx: Any, image: Tensor, guide: MattingGuide) -> Tensor:
        value, grad = quadratic_and_gradient(guide, image)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx: Any, upstream: Tensor) -> tuple[Tensor, None]:
        (grad,) = ctx.saved_tensors
        return grad * upstream.to(grad.dtype), None


def regulariser(guide: MattingGuide, image: Tensor) -> Tensor:
    """``sum_c v_c^T L v_c / N`` for an (1, 3, H, W) image, differentiable."""
    value: Tensor = _Regulariser.apply(image, guide)
    return value
