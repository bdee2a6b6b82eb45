"""The style-transfer losses as pure functions on tensors: content, two style losses, TV.

Normalisation (our choice, documented in docs/method.md): every term is scale-free, so one set of
default weights works across image sizes, across layers (conv1_1 responses are much smaller than
conv5_1's) and across weight sources (Caffe 0..255 inputs vs torchvision's normalised ones). The
paper's per-layer ``1 / (4 N^2 M^2)`` factors serve the same purpose for one network and one
size; the relative forms keep them fixed for all.

* Statistics are averaged over positions, ``G = F F^T / (H W)`` (and the mean ``m = F 1 / (H W)``),
  so the same texture gives the same statistics at any image size.
* Content, per layer: the relative squared error ``|F - P|^2 / |P|^2`` (``relative_error``).
* Style ``w2``, the default: the squared Wasserstein-2 distance between Gaussian fits (mean and
  covariance) of the image's and the painting's features (``w2_distance``), divided by the
  painting's ``E|f|^2``. Its matrix square roots run in float64: ``eigh`` on a CPU, a fixed
  Newton-Schulz iteration elsewhere (``sqrt_method``).
* Style ``gram`` (Gatys et al.): the relative squared Gram error ``|G - A|^2 / |A|^2``.

Which layers, weights and loss a stage uses is the objective's business (``objective.style_loss``);
tiling needs the un-normalised sums (``gram_sum``, ``feature_sum``, ``squared_error_sum``) so that
tiles can add into global totals; the normalised functions are those sums divided once.

Over 300 lines on purpose: the loss terms with their square roots (eigh, Newton-Schulz) and their derivations.
"""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor


def _wide(tensor: Tensor) -> Tensor:
    """At least float32: bf16/fp16 activations are widened; float64 (references, gradchecks) is kept."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


# Positions per slice when a CPU widens bf16/fp16 features for a Gram product: the fp32 copy and
# product then take 2 x C x 2**20 x 4 bytes at most, not 2 x C x H x W x 4 (~8 GB at 4096 x 4096).
WIDEN_CHUNK = 2**20


class _GramSum(torch.autograd.Function):
    """``F F^T`` of ``F`` (C, N) summed in float32 or wider, keeping only ``F`` for the backward pass.

    ``low`` (CUDA, bf16/fp16 features): the products take the features as they are and sum in
    fp32 (``torch.mm(..., out_dtype=float32)``, tensor cores). A bf16 x bf16 product is exact in
    fp32, so the forward is the widened product up to summation order. The backward multiplies the
    factor rounded to the features' dtype into them (fp32 accumulation, rounded once to their dtype,
    which is what the gradient is cast to anyway). Otherwise (a CPU, fp32): the features are widened
    in slices of ``WIDEN_CHUNK`` positions, never all at once: plain autograd would keep a widened
    fp32 copy of every bf16 style layer (8 GB at 4096 x 4096), and one whole-layer copy and product
    in the backward pass took 512 B per pixel at conv1_1, the peak of the whole evaluation.
    """

    @staticmethod
    def forward(ctx: Any, flat: Tensor, low: bool) -> Tensor:
        ctx.save_for_backward(flat)
        ctx.low = low
        if low:
            return torch.mm(flat, flat.T, out_dtype=torch.float32)
        total = None
        for part in torch.split(flat, WIDEN_CHUNK, dim=1):
            wide = _wide(part)
            total = wide @ wide.T if total is None else total.addmm_(wide, wide.T)
        assert total is not None  # split gives at least one part, empty or not
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (flat,) = ctx.saved_tensors
        factor = grad + grad.T  # (C, C), float32 or wider
        if ctx.low:  # (F^T factor)^T: the factor is symmetric, and the result keeps F's layout
            return torch.mm(flat.T, factor.to(flat.dtype)).T, None
        out = torch.empty_like(flat)
        for part, into in zip(torch.split(flat, WIDEN_CHUNK, dim=1), torch.split(out, WIDEN_CHUNK, dim=1), strict=True):
            into.copy_(factor.to(torch.promote_types(factor.dtype, part.dtype)) @ _wide(part))
        return out, None


def gram_sum(features: Tensor, low_precision_products: bool = False) -> Tensor:
    """Sum over positions of f f^T. (1, C, H, W) -> (C, C), accumulated in float32 or wider.

    ``low_precision_products``: bf16/fp16 features are multiplied as they are (CUDA, see
    ``placement.Precision.low_precision_products``); otherwise they are widened first.
    """
    if features.dim() != 4 or features.shape[0] != 1:
        raise ValueError(f"gram needs one feature map (1, C, H, W), got shape {tuple(features.shape)}")
    _, channels, height, width = features.shape
    low = low_precision_products and features.dtype in (torch.bfloat16, torch.float16)
    return cast(Tensor, _GramSum.apply(features.reshape(channels, height * width), low))


def feature_sum(features: Tensor) -> Tensor:
    """Sum over positions of f, (1, C, H, W) -> (C,), in float32 or wider."""
    return features.sum(dim=(0, 2, 3), dtype=torch.promote_types(features.dtype, torch.float32))


def gram(features: Tensor, low_precision_products: bool = False) -> Tensor:
    """Position-averaged Gram matrix. (1, C, H, W) -> (C, C)."""
    _, _, height, width = features.shape
    return gram_sum(features, low_precision_products) / (height * width)


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
    # sum() starts from 0, but there is at least one style: each value is a tensor
    return {name: cast(Tensor, sum((w / total) * grams[name] for grams, w in zip(per_style, weights, strict=True)))
            for name in layers}


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """A CPU eigendecomposition on one thread: LAPACK's threaded ``syevd`` was measured 100x
    slower (11 s instead of 0.1 s at 512 channels) on a 2-core machine with one other busy
    process; on one thread it costs ~60-100 ms at 512 channels, busy machine or not."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _eigh(matrix: Tensor) -> tuple[Tensor, Tensor]:
    with _one_cpu_thread(matrix.device):
        values, vectors = torch.linalg.eigh((matrix + matrix.mT) / 2)
        return values, vectors


# ---------------------------------------------------------------- square roots: eigh or matmuls

SQRT_METHODS = ("eigh", "newton-schulz")
_forced_methods: list[str] = []


def sqrt_method(device: torch.device) -> str:
    """How ``trace_sqrt`` and ``matrix_sqrt`` work on ``device``.

    ``eigh`` (float64 LAPACK) on a CPU: 48-65 ms at C = 512 on the dev CPU, one thread, against
    7-9x that for the Newton-Schulz iteration's 59 matmuls (``benchmarks/w2_sqrt.py``), and a host
    read costs nothing there. ``newton-schulz`` elsewhere: CUDA's ``eigh`` ends with ATen's error check
    (``infos.any().item()``), a wait for the device per call; matmuls queue without one.
    ``forced_sqrt_method`` overrides the choice (tests run the CUDA path on a CPU).
    """
    if _forced_methods:
        return _forced_methods[-1]
    return "eigh" if device.type == "cpu" else "newton-schulz"


@contextmanager
def forced_sqrt_method(method: str) -> Iterator[None]:
    """Within the block, ``sqrt_method`` answers ``method`` on every device."""
    if method not in SQRT_METHODS:
        raise ValueError(f"unknown square-root method {method!r}; use one of {SQRT_METHODS}")
    _forced_methods.append(method)
    try:
        yield
    finally:
        _forced_methods.pop()


# Newton-Schulz is built for matrices whose eigenvalues, over their Frobenius norm, are >= NS_FLOOR**2.
# The w2 ridge bounds the cross product's from below by ridge**2 / |M|_F: 5e-10 at worst on the
# bundled pair (photo or noise against the painting, 128-512 px, conv1_1..conv5_1), sqrt: 2e-5;
# the worst case the ridge allows at C = 512 with the image's variance up to 4x the painting's
# is ~4e-12, sqrt 2e-6. Smaller eigenvalues still converge, only later: no failure, a lag.
NS_FLOOR = 1e-6
# Iterations: the worst relative error of the w2 loss over 45 layers of the bundled pair (photo,
# noise, the painting near the optimum; 128-512 px) falls from 3e-2 (17) to 7e-7 (18) and 4e-10
# (19, float64's floor against eigh), the gradient's from 1e-3 (17) to 3e-8 (18 on) (docs/experiments.md,
# "The w2 square root"); one more than that for the margin.
NS_ITERATIONS = 20


@functools.cache
def _ns_scales(floor: float, iterations: int) -> tuple[float, ...]:
    """Per iteration, the scale ``a`` of Chen & Chow's scaled Newton-Schulz step (2014).

    The unscaled step maps a normalised singular value ``x`` to ``x (3 - x^2) / 2``: ~1.5x per step
    while ``x`` is small: 30-40 steps to converge on VGG's statistics (measured). Scaling ``x`` by
    ``a = sqrt(3 / (1 + l + l^2))`` first, for the interval [l, 1] the values are known to lie in,
    maps its two ends to the same point, so the smallest grows ~2.6x per step, and the interval's
    new bottom is computable in advance: the schedule depends on ``floor`` alone, not on the data.
    """
    scales, low = [], floor
    for _ in range(iterations):
        scale = math.sqrt(3.0 / (1.0 + low + low * low))
        scales.append(scale)
        low = scale * low * (3.0 - (scale * low) ** 2) / 2.0
    return tuple(scales)


def newton_schulz(matrix: Tensor, iterations: int | None = None, floor: float | None = None) -> tuple[Tensor, Tensor]:
    """``(M^(1/2), M^(-1/2))`` of symmetric positive definite matrices (..., C, C), by matmuls only.

    The coupled iteration ``T = a (3 I - a^2 Z Y) / 2; Y <- Y T; Z <- T Z`` from ``Y = M / |M|_F``,
    ``Z = I`` (scales ``a``: ``_ns_scales``): a fixed number of steps, no eigendecomposition, no
    host read, no branch on the data, so a GPU runs it without waiting. Float64: in float32 it
    diverges at VGG's conditioning (1e8-1e9, beyond float32's 1e-7 rounding; docs/experiments.md).
    ``iterations`` and ``floor`` default to ``NS_ITERATIONS`` and ``NS_FLOOR`` (``floor`` 1: the
    unscaled iteration).
    """
    steps = _ns_steps(matrix, NS_ITERATIONS if iterations is None else iterations, NS_FLOOR if floor is None else floor)
    y, z, norm = deque(steps, maxlen=1).pop()  # only the last iterates are kept
    root_norm = norm.sqrt()
    return y * root_norm, z / root_norm


def _ns_steps(matrix: Tensor, iterations: int, floor: float) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """``newton_schulz``'s iterates ``(Y_k, Z_k)`` after each step, with the norm ``M`` was divided by
    (``benchmarks/w2_sqrt.py`` reads them all from one run)."""
    norm = torch.linalg.matrix_norm(matrix, keepdim=True).clamp_min(torch.finfo(matrix.dtype).tiny)  # (..., 1, 1)
    y, z = matrix / norm, None
    for scale in _ns_scales(floor, iterations):
        t = (y if z is None else z @ y) * (-0.5 * scale**3)  # Z = I at the first step: Z Y = Y
        t.diagonal(dim1=-2, dim2=-1).add_(1.5 * scale)
        y, z = y @ t, (t if z is None else t @ z)
        yield y, z, norm


class _TraceSqrt(torch.autograd.Function):
    """``tr((B M B)^(1/2))`` of symmetric positive semi-definite ``M`` (..., C, C), ``B`` a symmetric
    constant (the identity when None), differentiable in ``M``.

    The gradient of a trace function ``tr f(X)`` is ``f'(X) = X^(-1/2) / 2``, which both methods
    give without differentiating through them: ``eigh`` as ``V diag(1 / (2 sqrt(l))) V^T`` (no
    eigenvector derivatives, so it stays stable where eigenvalues repeat; autograd through ``eigh``
    divides by their differences; eigenvalues below ``floor`` count as ``floor``), Newton-Schulz
    as its second iterate ``Z`` (``newton_schulz``), for free. With ``B`` the gradient in ``M`` is
    ``B f'(BMB) B``: for ``eigh`` ``(B V) diag (B V)^T``, two matmuls where autograd through the
    product took three (one 512 x 512 float64 matmul is ~10 ms on the dev CPU).
    """

    @staticmethod
    def forward(ctx: Any, matrix: Tensor, between: Tensor | None, floor: float, method: str) -> Tensor:
        product = matrix if between is None else between @ matrix @ between
        ctx.method, ctx.has_between = method, between is not None
        outer = () if between is None else (between,)
        if method == "eigh":
            values, vectors = _eigh(product)
            roots = values.clamp_min(floor).sqrt()
            ctx.save_for_backward(vectors, roots, *outer)
            return roots.sum(-1)
        root, inv_root = newton_schulz(product)
        ctx.save_for_backward(inv_root, *outer)
        return root.diagonal(dim1=-2, dim2=-1).sum(-1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        saved = ctx.saved_tensors
        between = saved[-1] if ctx.has_between else None
        if ctx.method == "eigh":
            vectors, roots = saved[:2]
            outer = vectors if between is None else between @ vectors
            derivative = (outer * (0.5 / roots).unsqueeze(-2)) @ outer.mT
        else:
            derivative = 0.5 * saved[0]
            if between is not None:
                derivative = between @ derivative @ between
        return grad[..., None, None] * derivative, None, None, None


def trace_sqrt(matrix: Tensor, floor: float = 1e-30, between: Tensor | None = None) -> Tensor:
    """``tr(M^(1/2))`` per matrix of (..., C, C), differentiable (``_TraceSqrt``), by ``sqrt_method``;
    with ``between`` (a symmetric (..., C, C) constant, no gradient) ``tr((B M B)^(1/2))``."""
    return cast(Tensor, _TraceSqrt.apply(matrix, between, floor, sqrt_method(matrix.device)))


def matrix_sqrt(matrix: Tensor) -> Tensor:
    """The symmetric square root of symmetric positive semi-definite matrices (..., C, C), by
    ``sqrt_method`` (Newton-Schulz needs them definite: the w2 covariances carry a ridge)."""
    if sqrt_method(matrix.device) == "newton-schulz":
        return newton_schulz(matrix)[0]
    values, vectors = _eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt().unsqueeze(-2)) @ vectors.mT


# Ridge added to both covariances, relative to the target's mean variance tr(S_t) / C: a layer's
# covariance is singular where it has fewer positions than channels (conv5_1 of a 256 px image:
# 256 positions, 512 channels), the square root's gradient grows as 1 / sqrt(eigenvalue), and
# the fp32 statistics carry rounding of ~1e-7 of the largest eigenvalue, which this ridge exceeds.
W2_RIDGE = 1e-3
# The covariances, their product and its square root: float64 by measurement, on both methods
# (float32 eigh made the gradient 1e5 times too large; float32 Newton-Schulz diverges).
W2_DTYPE = torch.float64


@dataclass(frozen=True)
class W2Target:
    """A style layer's Gaussian fit, precomputed once per stage for ``w2_distance`` (``W2_DTYPE``):
    on the Newton-Schulz path its square root is one more matmul iteration, no ``eigh`` at all."""

    mean: Tensor  # (..., C)
    cov: Tensor  # (..., C, C), ridge included
    root: Tensor  # (..., C, C), cov^(1/2)
    ridge: Tensor  # (..., 1, 1), added to the image's covariance too
    norm: Tensor  # (...), E|f|^2 = tr(second moment), float32: the scale W2^2 is divided by


def w2_target(mean: Tensor, second_moment: Tensor) -> W2Target:
    """The target of ``w2_distance`` from a style's feature mean (..., C) and ``E[f f^T]`` (..., C, C)."""
    norm = _wide(second_moment).diagonal(dim1=-2, dim2=-1).sum(-1)
    mean, second_moment = mean.to(W2_DTYPE), second_moment.to(W2_DTYPE)
    cov = second_moment - mean.unsqueeze(-1) * mean.unsqueeze(-2)
    channels = cov.shape[-1]
    ridge = (W2_RIDGE * cov.diagonal(dim1=-2, dim2=-1).sum(-1) / channels).clamp_min(1e-12)[..., None, None]
    cov = cov + ridge * torch.eye(channels, dtype=cov.dtype, device=cov.device)
    return W2Target(mean, cov, matrix_sqrt(cov), ridge, norm)


def w2_distance(mean: Tensor, second_moment: Tensor, target: W2Target) -> Tensor:
    """Squared Wasserstein-2 distance between Gaussian fits of two feature distributions.

    ``W2^2 = |m - m_t|^2 + tr(S) + tr(S_t) - 2 tr((S_t^(1/2) S S_t^(1/2))^(1/2))``, the image's
    Gaussian from its mean ``m`` (..., C) and ``E[f f^T]`` (..., C, C): both sums over positions
    divided by their count, so tiles and ranks add into them (crowsonkb's style-transfer-pytorch
    uses this loss since 2023). Zero for equal statistics; leading dimensions are batches.

    The statistics come in as float32; the covariance, the product and its square root
    (``trace_sqrt``: ``eigh`` on a CPU, Newton-Schulz elsewhere, ``sqrt_method``) run in float64
    (``W2_DTYPE``), once per layer per evaluation on (C, C) matrices: the product's eigenvalues
    span ~1e9 at VGG's layers, and in fp32 the small ones drown in rounding, which made the
    gradient ~1e5 times too large (45037 vs 0.30 on a 96 x 64 test image).
    """
    dtype = _wide(second_moment).dtype
    mean, second_moment = mean.to(W2_DTYPE), second_moment.to(W2_DTYPE)
    channels = second_moment.shape[-1]
    cov = second_moment - mean.unsqueeze(-1) * mean.unsqueeze(-2)
    cov = cov + target.ridge * torch.eye(channels, dtype=cov.dtype, device=cov.device)
    trace = cov.diagonal(dim1=-2, dim2=-1).sum(-1) + target.cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    cross = trace_sqrt(cov, between=target.root)  # tr((S_t^(1/2) S S_t^(1/2))^(1/2))
    return ((mean - target.mean).square().sum(-1) + trace - 2 * cross).to(dtype)


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
