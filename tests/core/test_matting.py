"""The Matting Laplacian by box filters (core/matting.py) against the matrix itself."""

from __future__ import annotations

import pytest
import torch

from hires_nst.core import matting
from tests.helpers.matting_reference import sparse_matting_laplacian

F64 = torch.float64


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("epsilon", [matting.PAPER_EPSILON, 1e-3])
def test_box_filter_l_times_v_equals_the_sparse_matting_laplacian_times_v(epsilon: float) -> None:
    image, v = random_image(16, 16), random_image(16, 16, seed=1)
    laplacian = sparse_matting_laplacian(image, epsilon)
    expected = (laplacian @ v.reshape(3, -1).T).T.reshape(3, 16, 16)
    got = matting.apply(matting.matting_guide(image, epsilon), v)
    assert got.dtype == F64
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9 * expected.abs().max().item())
    assert expected.abs().max() > 1.0  # not a vacuous comparison of zeros


def test_the_matting_laplacian_is_symmetric_positive_semidefinite_and_rows_sum_to_zero() -> None:
    dense = sparse_matting_laplacian(random_image(16, 16), matting.PAPER_EPSILON).to_dense()
    torch.testing.assert_close(dense, dense.T, rtol=0, atol=1e-9)
    eigenvalues = torch.linalg.eigvalsh(dense)
    assert eigenvalues.min() >= -1e-9
    assert eigenvalues.max() > 1.0
    torch.testing.assert_close(dense.sum(1), torch.zeros(256, dtype=F64), rtol=0, atol=1e-8)  # constants: L 1 = 0


def test_l_of_a_locally_affine_function_of_the_colours_is_zero_inside_each_piece() -> None:
    image = random_image(16, 20)
    guide = matting.matting_guide(image)
    left = torch.tensor([[0.3, -1.2, 0.5], [2.0, 0.1, -0.7], [0.0, 0.4, 0.9]], dtype=F64)
    right = torch.tensor([[-0.5, 0.2, 1.1], [0.3, 0.3, 0.3], [1.5, -2.0, 0.1]], dtype=F64)
    pieces = torch.cat([torch.einsum("cm,mhw->chw", left, image[:, :, :10]) + 0.2,
                        torch.einsum("cm,mhw->chw", right, image[:, :, 10:]) - 0.1], dim=2)
    lv = matting.apply(guide, pieces)
    noise_lv = matting.apply(guide, random_image(16, 20, seed=5))
    # A pixel whose windows all lie in one piece (columns < 10 - 2 or >= 10 + 2) sees an affine map.
    inside = torch.cat([lv[..., :8], lv[..., 12:]], dim=-1)
    assert inside.abs().max() < 1e-6 * noise_lv.abs().max()
    assert lv[..., 9:11].abs().max() > 1e-2 * noise_lv.abs().max()  # across the seam it is not


def test_l_times_v_in_row_bands_equals_the_whole_image() -> None:
    image, v = random_image(23, 17), random_image(23, 17, seed=2)
    guide = matting.matting_guide(image)
    whole = matting.apply(guide, v, band_pixels=10**9)
    for band_pixels in (1, 17 * 3, 17 * 5 + 4):
        torch.testing.assert_close(matting.apply(guide, v, band_pixels=band_pixels), whole, rtol=0, atol=1e-12)


def test_regulariser_value_is_v_transpose_l_v_per_pixel_and_its_gradient_checks_in_float64() -> None:
    image = random_image(9, 11)
    guide = matting.matting_guide(image, epsilon=1e-4)
    v = random_image(9, 11, seed=3).unsqueeze(0).requires_grad_(True)
    laplacian = sparse_matting_laplacian(image, 1e-4)
    flat = v.detach().reshape(3, -1)
    expected = sum(flat[c] @ (laplacian @ flat[c]) for c in range(3)) / 99
    torch.testing.assert_close(matting.regulariser(guide, v), expected, rtol=1e-10, atol=0)
    assert torch.autograd.gradcheck(lambda x: matting.regulariser(guide, x), (v,), eps=1e-6, atol=1e-6)


def test_a_float32_guide_and_image_give_the_float64_regulariser_closely() -> None:
    image, v = random_image(32, 32), random_image(32, 32, seed=4).unsqueeze(0)
    exact, exact_grad = matting.quadratic_and_gradient(matting.matting_guide(image), v)
    value, grad = matting.quadratic_and_gradient(matting.matting_guide(image.float()), v.float())
    assert value.dtype == grad.dtype == torch.float32
    torch.testing.assert_close(value.double(), exact, rtol=1e-4, atol=0)
    torch.testing.assert_close(grad.double(), exact_grad, rtol=1e-3, atol=1e-3 * exact_grad.abs().max().item())


def test_the_guided_filter_keeps_an_affine_function_of_the_guide_and_smooths_noise() -> None:
    image = random_image(24, 20)
    affine = torch.einsum("cm,mhw->chw", torch.tensor([[0.5, 0.2, 0.1], [0.0, 1.0, 0.0], [0.3, 0.3, 0.3]],
                                                       dtype=F64), image) + 0.1
    torch.testing.assert_close(matting.guided_filter(image, affine, radius=2, epsilon=1e-9), affine, rtol=0, atol=1e-5)
    noise = random_image(24, 20, seed=7)
    smoothed = matting.guided_filter(image, noise, radius=2, epsilon=1.0)  # a large ridge: close to a box blur
    assert smoothed.std() < 0.6 * noise.std() and smoothed.shape == noise.shape


def test_affinity_smoothing_solves_identity_plus_strength_times_l() -> None:
    image, v = random_image(16, 16), random_image(16, 16, seed=8)
    guide = matting.matting_guide(image, epsilon=1e-3)
    x = matting.affinity_smooth(guide, v, strength=0.5, iterations=500, tolerance=1e-12)
    dense = sparse_matting_laplacian(image, 1e-3).to_dense()
    expected = torch.linalg.solve(torch.eye(256, dtype=F64) + 0.5 * dense, v.reshape(3, -1).T).T.reshape(v.shape)
    torch.testing.assert_close(x, expected, rtol=1e-8, atol=1e-8)
    assert float((x - v).abs().max()) > 1e-2  # it did smooth


def test_the_last_pass_keeps_the_photo_itself_and_clips_to_the_unit_range() -> None:
    photo = random_image(20, 24).float().unsqueeze(0)
    for method in ("guided", "affinity"):
        kept = matting.smooth(photo, photo, method)
        assert kept.shape == photo.shape and 0 <= kept.min() and kept.max() <= 1
        assert float((kept - photo).abs().mean()) < 0.05, method  # the photo is its own affine map
        noisy = (photo + 0.3 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
        assert float((matting.smooth(noisy, photo, method) - photo).abs().mean()) < float((noisy - photo).abs().mean())
    with pytest.raises(ValueError, match="guided or affinity"):
        matting.smooth(photo, photo, "blur")
