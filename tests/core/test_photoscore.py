"""The photo-mode measures (core/photoscore.py)."""

from __future__ import annotations

import numpy as np
import pytest

from hires_nst.core.photoscore import colour_distance, edge_agreement


def photo_like(seed: int = 0) -> np.ndarray:
    """Smooth shapes with straight edges: a lit rectangle and a diagonal band on a gradient."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:64, 0:80] / 64.0
    image = np.stack([0.3 + 0.2 * x, 0.4 + 0.1 * y, 0.5 - 0.2 * x], axis=-1)
    image[10:40, 15:50] += 0.3
    image[(x - y > 0.2) & (x - y < 0.4)] *= 0.5
    return np.clip(image + 0.01 * rng.standard_normal(image.shape), 0, 1).astype(np.float32)


def test_edge_agreement_is_one_for_the_photo_and_for_a_recoloured_photo_and_about_half_for_noise() -> None:
    photo = photo_like()
    assert edge_agreement(photo, photo) == pytest.approx(1.0)
    recoloured = np.clip(0.6 * photo[..., ::-1] + 0.2, 0, 1)  # other colours, same lines
    assert edge_agreement(recoloured, photo) > 0.9
    noise = np.random.default_rng(1).random(photo.shape).astype(np.float32)
    assert 0.4 < edge_agreement(noise, photo) < 0.6
    blurred_texture = np.clip(photo + 0.3 * noise - 0.15, 0, 1)
    assert 0.6 < edge_agreement(blurred_texture, photo) < 0.95


def test_edge_agreement_refuses_images_of_different_sizes() -> None:
    with pytest.raises(ValueError, match="resize"):
        edge_agreement(photo_like()[:32], photo_like())


def test_colour_distance_is_zero_for_equal_palettes_and_the_mean_shift_for_a_shifted_image() -> None:
    photo = photo_like()
    assert colour_distance(photo, photo) == pytest.approx(0.0, abs=1e-3)
    assert colour_distance(photo, photo[::-1, ::2]) < 2.0  # the same colours, rearranged and subsampled
    shift = np.array([0.1, -0.05, 0.02], dtype=np.float32)
    assert colour_distance(photo + shift, photo) == pytest.approx(255 * float(np.linalg.norm(shift)), rel=1e-3)
