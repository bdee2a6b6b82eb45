"""Colour control (Gatys et al. 2017, section 5): pure functions on (H, W, 3) float arrays in [0, 1].

* ``luminance``: style is transferred on luminance only. Content and style become YIQ luma (the
  style's luma matched to the content's mean and standard deviation, so a dark painting does not
  darken the photo), the optimisation runs on grey images, and the content's I/Q chroma is put
  back on the result.
* ``match``: before transfer, the style image is recoloured by the affine map that gives its
  pixels the content's colour mean and covariance (symmetric matrix square roots).
"""

from __future__ import annotations

from typing import cast

import numpy as np

# RGB -> YIQ (NTSC), as in the reference code of Gatys et al. 2017.
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]], dtype=np.float64)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def rgb_to_yiq(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float64) @ _RGB_TO_YIQ.T).astype(np.float32)


def yiq_to_rgb(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float64) @ _YIQ_TO_RGB.T).astype(np.float32)


def luminance(image: np.ndarray) -> np.ndarray:
    """Y of YIQ as an (H, W) array."""
    return rgb_to_yiq(image)[..., 0]


def grey(luma: np.ndarray) -> np.ndarray:
    """(H, W) luma -> (H, W, 3) grey RGB image, clipped to [0, 1]."""
    return np.repeat(np.clip(luma, 0.0, 1.0)[..., None], 3, axis=2).astype(np.float32)


def match_luminance(style_luma: np.ndarray, content_luma: np.ndarray) -> np.ndarray:
    """Shift and scale the style's luma to the content's mean and standard deviation."""
    s_mean, s_std = style_luma.mean(), style_luma.std()
    c_mean, c_std = content_luma.mean(), content_luma.std()
    return cast(np.ndarray, (style_luma - s_mean) * (c_std / max(s_std, 1e-6)) + c_mean)


def with_chroma_of(result: np.ndarray, content: np.ndarray) -> np.ndarray:
    """The result's luma with the content's I/Q chroma (both (H, W, 3), same size)."""
    yiq = rgb_to_yiq(content)
    yiq[..., 0] = luminance(result)
    return cast(np.ndarray, np.clip(yiq_to_rgb(yiq), 0.0, 1.0))


def _sym_sqrt(matrix: np.ndarray, inverse: bool = False) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    values = np.clip(values, 1e-10, None)  # a flat channel must not divide by zero
    power = -0.5 if inverse else 0.5
    return cast(np.ndarray, (vectors * values**power) @ vectors.T)


def mean_and_covariance(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pixels = image.reshape(-1, 3).astype(np.float64)
    return pixels.mean(axis=0), np.cov(pixels, rowvar=False)


def match_colors(style: np.ndarray, content: np.ndarray, clip: bool = True) -> np.ndarray:
    """Recolour ``style`` to the content's colour mean and covariance: x' = A (x - mu_s) + mu_c.

    A = C_c^(1/2) C_s^(-1/2) is the symmetric ("sym") choice of Gatys et al. 2017; with
    ``clip=False`` the statistics match exactly, clipping to [0, 1] bends them slightly.
    """
    mu_s, cov_s = mean_and_covariance(style)
    mu_c, cov_c = mean_and_covariance(content)
    transform = _sym_sqrt(cov_c) @ _sym_sqrt(cov_s, inverse=True)
    pixels = (style.reshape(-1, 3).astype(np.float64) - mu_s) @ transform.T + mu_c
    out = pixels.reshape(style.shape).astype(np.float32)
    return cast(np.ndarray, np.clip(out, 0.0, 1.0)) if clip else out
