"""Measures of photo mode (docs/photo.md): does the output keep the photo's edges, and how close
are its colours to the style photo's? Pure functions on (H, W, 3) float arrays in [0, 1].

* ``edge_agreement``: how well the output's local gradient orientations agree with the photo's,
  where the photo has edges. ``cos^2`` of the angle between the two gradients (1: the same line,
  0.5: no relation, sign ignored: an edge that turned from dark-light to light-dark is still
  there), weighted by the photo's gradient magnitude. Brush texture and bent lines lower it;
  recolouring does not (luminance gradients, compared by direction only).
* ``colour_distance``: the Wasserstein-2 distance between Gaussian fits of two images' pixel
  colours (mean and 3x3 covariance, RGB in 0..255 units): how far the output's palette is from
  the style photo's.
"""

from __future__ import annotations

import numpy as np

from hires_nst.core.color import _sym_sqrt, luminance, mean_and_covariance


def _gradients(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel derivatives of the luminance, (H - 2, W - 2) each (valid positions only)."""
    y = luminance(image).astype(np.float64)
    rows = y[:-2] + 2 * y[1:-1] + y[2:]  # smoothing down, for d/dx
    cols = y[:, :-2] + 2 * y[:, 1:-1] + y[:, 2:]  # smoothing across, for d/dy
    dx = rows[:, 2:] - rows[:, :-2]
    dy = cols[2:] - cols[:-2]
    return dx, dy


def edge_agreement(output: np.ndarray, photo: np.ndarray) -> float:
    """Magnitude-weighted mean of ``cos^2`` of the angle between output and photo gradients, in
    [0, 1]; both images the same size."""
    if output.shape != photo.shape:
        raise ValueError(f"output is {output.shape}, photo {photo.shape}: resize one to the other")
    ox, oy = _gradients(output)
    px, py = _gradients(photo)
    weight = np.hypot(px, py)
    dot = ox * px + oy * py
    cos2 = dot * dot / np.maximum((ox * ox + oy * oy) * (px * px + py * py), 1e-20)
    return float((weight * cos2).sum() / max(weight.sum(), 1e-20))


def colour_distance(a: np.ndarray, b: np.ndarray) -> float:
    """W2 distance between Gaussian fits of the pixel colours of ``a`` and ``b`` (any sizes), in
    0..255 RGB units: ``sqrt(|m_a - m_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2))``."""
    mean_a, cov_a = mean_and_covariance(a)
    mean_b, cov_b = mean_and_covariance(b)
    root_a = _sym_sqrt(cov_a)
    cross = _sym_sqrt(root_a @ cov_b @ root_a)
    squared = float(np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * cross))
    return 255.0 * float(np.sqrt(max(squared, 0.0)))
