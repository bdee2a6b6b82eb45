"""Colour control: luminance-only transfer and colour matching."""

from __future__ import annotations

import numpy as np
import pytest

from hires_nst.core import color


def random_image(seed: int, shape=(24, 32, 3), tint=(1.0, 1.0, 1.0)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.random(shape) * np.array(tint), 0, 1).astype(np.float32)


def test_yiq_round_trip_is_identity() -> None:
    image = random_image(0)
    np.testing.assert_allclose(color.yiq_to_rgb(color.rgb_to_yiq(image)), image, atol=1e-5)


def test_luminance_of_grey_is_the_grey_level() -> None:
    image = np.full((2, 2, 3), 0.4, np.float32)
    np.testing.assert_allclose(color.luminance(image), 0.4, atol=1e-6)


def test_matched_style_luminance_has_the_content_mean_and_std() -> None:
    content, style = color.luminance(random_image(1) * 0.5), color.luminance(random_image(2))
    matched = color.match_luminance(style, content)
    assert matched.mean() == pytest.approx(content.mean(), abs=1e-5)
    assert matched.std() == pytest.approx(content.std(), rel=1e-4)


def test_output_takes_the_content_chroma_and_keeps_its_own_luminance() -> None:
    content = random_image(3, tint=(0.6, 0.8, 0.4)) * 0.5 + 0.25
    result = color.grey(color.luminance(random_image(4)) * 0.5 + 0.25)
    combined = color.with_chroma_of(result, content)
    np.testing.assert_allclose(color.rgb_to_yiq(combined)[..., 1:], color.rgb_to_yiq(content)[..., 1:], atol=1e-4)
    np.testing.assert_allclose(color.luminance(combined), color.luminance(result), atol=1e-4)


def test_matched_style_has_the_content_colour_mean_and_covariance() -> None:
    content = random_image(5, tint=(0.9, 0.5, 0.2))
    style = random_image(6, shape=(40, 30, 3), tint=(0.2, 0.4, 1.0)) ** 2
    matched = color.match_colors(style, content, clip=False)
    mean_m, cov_m = color.mean_and_covariance(matched)
    mean_c, cov_c = color.mean_and_covariance(content)
    np.testing.assert_allclose(mean_m, mean_c, atol=1e-5)
    np.testing.assert_allclose(cov_m, cov_c, atol=1e-5)


def test_matched_style_keeps_its_shape_and_range() -> None:
    matched = color.match_colors(random_image(7, shape=(10, 12, 3)), random_image(8))
    assert matched.shape == (10, 12, 3) and matched.min() >= 0 and matched.max() <= 1
