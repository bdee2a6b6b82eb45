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
BAND_PIXELS = 1 << 18  # pixels per band of ``apply``: ~25 MB of float64 buffers at a time (measured fastest)


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
    (C, H - 2r, W - 2r) -> (C, H, W). (A box mean over the zero-padded map: in float64 on a CPU
    about 5x faster than the equal ``conv_transpose2d`` with a kernel of ones.)"""
    side = 2 * radius + 1
    padded = F.pad(x.unsqueeze(0), (2 * radius,) * 4)
    return F.avg_pool2d(padded, side, stride=1).squeeze(0).mul_(side * side)


def _window_counts(height: int, width: int, radius: int, like: Tensor) -> Tensor:
    """``n_i``, how many windows wholly inside an ``height`` x ``width`` image hold each pixel: (1, H, W)."""
    def along(n: int) -> Tensor:
        return _window_sum(like.new_ones((1, 1, n - 2 * radius)), radius)[0, radius]

    return (along(height).unsqueeze(1) * along(width).unsqueeze(0)).unsqueeze(0)


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


def _apply_strip(guide: MattingGuide, v: Tensor, dtype: torch.dtype = COMPUTE_DTYPE) -> Tensor:
    """``L v`` for one strip whose guide holds exactly its windows; (C, h, w) -> (C, h, w) in ``dtype``.

    Written as in-place multiply-adds over the three colours (``m``, ``n``), each broadcast over the
    C channels of ``v``: a CPU spends this term's time moving memory, not multiplying.
    """
    r, channels = guide.radius, v.shape[0]
    image, mean, inverse = guide.image.to(dtype), guide.mean.to(dtype), guide.inverse.to(dtype)
    v = v.to(dtype)
    # mean_k(v_c) and mean_k(I_m v_c), one box filter: (C + 3C, h', w')
    products = v.new_empty((4 * channels, *v.shape[1:]))
    products[:channels] = v
    for m in range(3):
        torch.mul(image[m], v, out=products[(m + 1) * channels:(m + 2) * channels])
    means = _box_mean(products, r)
    v_mean, cov = means[:channels], means[channels:].view(3, channels, *means.shape[1:])
    for m in range(3):
        cov[m].addcmul_(mean[m], v_mean, value=-1)  # cov_k(I_m, v_c)
    # a_k = D_k cov_k (3, C) and b_k = mean_k(v) - a_k^T mu_k (C), side by side: (3C + C, h', w')
    coefficients = v_mean.new_empty((4 * channels, *v_mean.shape[1:]))
    a, b = coefficients[:3 * channels].view(3, channels, *v_mean.shape[1:]), coefficients[3 * channels:]
    b.copy_(v_mean)
    for m in range(3):
        torch.mul(inverse[m, 0], cov[0], out=a[m])
        a[m].addcmul_(inverse[m, 1], cov[1]).addcmul_(inverse[m, 2], cov[2])
        b.addcmul_(mean[m], a[m], value=-1)
    # Summed over the windows that hold each pixel, one adjoint box filter: (3C + C, h, w)
    sums = _window_sum(coefficients, r)
    lv = _window_counts(v.shape[1], v.shape[2], r, v) * v - sums[3 * channels:]
    a_sum = sums[:3 * channels].view(3, channels, *v.shape[1:])
    for m in range(3):
        lv.addcmul_(image[m], a_sum[m], value=-1)
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


def guided_filter(guide_image: Tensor, v: Tensor, radius: int = 8, epsilon: float = 1e-4) -> Tensor:
    """He et al.'s colour guided filter of ``v`` (C, H, W) by ``guide_image`` (3, H, W): each
    window's least-squares affine map of the guide's colours to ``v`` (ridge ``epsilon``), averaged
    over the windows that hold each pixel. It is the same box-filter algebra as ``apply``:
    ``q = v - (L v) / n`` for the Laplacian with ``eps = epsilon * |w|`` (windows wholly inside
    the image, so a border pixel averages fewer of them)."""
    area = (2 * radius + 1) ** 2
    guide = matting_guide(guide_image, epsilon * area, radius)
    counts = _window_counts(v.shape[-2], v.shape[-1], radius, v.to(COMPUTE_DTYPE))
    return (v.to(COMPUTE_DTYPE) - apply(guide, v).to(COMPUTE_DTYPE) / counts).to(v.dtype)


def affinity_smooth(guide: MattingGuide, v: Tensor, strength: float = 1.0, iterations: int = 60,
                    tolerance: float = 1e-4) -> Tensor:
    """The closed-form photorealistic smoothing of ``v`` (C, H, W): ``argmin_x |x - v|^2 + strength
    x^T L x``, i.e. ``(I + strength L) x = v`` (Li et al. 2018 solve the same kind of system with
    the matting affinity), by conjugate gradients with ``apply``: each iteration one ``L x``.
    Stops when the residual falls under ``tolerance`` of ``|v|``."""
    target = v.to(COMPUTE_DTYPE)
    x = target.clone()
    residual = target - (x + strength * apply(guide, x))
    direction = residual.clone()
    rr = (residual * residual).sum()
    stop = (tolerance * target.norm()) ** 2
    for _ in range(iterations):
        if rr <= stop:
            break
        product = direction + strength * apply(guide, direction)
        step = rr / (direction * product).sum()
        x.add_(step * direction)
        residual.sub_(step * product)
        rr_next = (residual * residual).sum()
        direction = residual + (rr_next / rr) * direction
        rr = rr_next
    return x.to(v.dtype)


# --photo-smooth: the settings measured in docs/photo.md ("The last pass").
GUIDED = {"radius": 4, "epsilon": 1e-3}
AFFINITY = {"strength": 1.0, "iterations": 30}


def smooth(image: Tensor, photo: Tensor, method: str) -> Tensor:
    """Photo mode's optional last pass over ``image`` (1, 3, H, W) guided by ``photo`` (the same
    shape): ``guided`` (``guided_filter``) or ``affinity`` (``affinity_smooth``), clipped to [0, 1]."""
    if method == "guided":
        out = guided_filter(photo[0], image[0], int(GUIDED["radius"]), GUIDED["epsilon"])
    elif method == "affinity":
        out = affinity_smooth(matting_guide(photo), image[0], AFFINITY["strength"], int(AFFINITY["iterations"]))
    else:
        raise ValueError(f"unknown smoothing {method!r}: guided or affinity")
    return out.clamp_(0.0, 1.0).unsqueeze(0)
