"""losses.py: hand-computed values on tiny tensors, and float64 gradient checks."""

from __future__ import annotations

import pytest
import torch

from hires_nst.core import losses
from hires_nst.engine.objective import Statistics, Targets, Weights, loss_terms

# Channel 0 = [[1, 2], [3, 4]], channel 1 = [[0, 1], [-1, 2]]; flattened c0 = (1, 2, 3, 4), c1 = (0, 1, -1, 2):
# c0.c0 = 30, c0.c1 = 0 + 2 - 3 + 8 = 7, c1.c1 = 0 + 1 + 1 + 4 = 6.
TINY = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [-1.0, 2.0]]]])  # (1, 2, 2, 2)


def test_gram_sum_is_sum_over_positions_of_outer_products() -> None:
    assert torch.equal(losses.gram_sum(TINY), torch.tensor([[30.0, 7.0], [7.0, 6.0]]))


def test_gram_is_averaged_over_positions() -> None:
    assert torch.equal(losses.gram(TINY), torch.tensor([[7.5, 1.75], [1.75, 1.5]]))


def test_gram_of_a_texture_does_not_depend_on_image_size() -> None:
    tile = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    tiled = tile.repeat(1, 1, 3, 2)  # the same texture over 6x the area
    torch.testing.assert_close(losses.gram(tiled), losses.gram(tile))


def test_gram_accumulates_low_precision_in_float32_and_keeps_float64() -> None:
    assert losses.gram(TINY.bfloat16()).dtype == torch.float32
    assert losses.gram(TINY.half()).dtype == torch.float32
    assert losses.gram(TINY.double()).dtype == torch.float64  # gradchecks and references stay exact


def test_gram_rejects_a_batch() -> None:
    with pytest.raises(ValueError, match=r"\(1, C, H, W\).*\(2, 2, 2, 2\)"):
        losses.gram(TINY.repeat(2, 1, 1, 1))


def test_relative_error_hand_computed() -> None:
    value, target = torch.tensor([1.0, 2.0, 3.0]), torch.ones(3)
    # |(0, 1, 2)|^2 / |(1, 1, 1)|^2 = 5 / 3
    assert losses.relative_error(value, target).item() == pytest.approx(5 / 3)
    assert losses.relative_error(value, target, target_norm=torch.tensor(5.0)).item() == pytest.approx(1.0)
    assert losses.relative_error(value, target, target_norm=10.0).item() == pytest.approx(0.5)


def test_content_error_hand_computed() -> None:
    features = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [3.0, 2.0]]]])
    # |(0, 2, 0, 2)|^2 / (1 + 0 + 9 + 4) = 8 / 14
    assert losses.relative_error(features, target).item() == pytest.approx(8 / 14)
    assert losses.relative_error(target, target).item() == 0.0


def test_style_layer_error_hand_computed() -> None:
    gram_matrix = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    target = torch.eye(2)
    # |[[1, 1], [1, 1]]|^2 / |I|^2 = 4 / 2
    assert losses.relative_error(gram_matrix, target).item() == pytest.approx(2.0)


def test_style_loss_is_the_weighted_sum_over_the_weighted_layers_only() -> None:
    grams = {"a": 2 * torch.eye(2), "b": torch.tensor([[3.0]]), "c": torch.tensor([[100.0]])}
    style = {"a": torch.eye(2), "b": torch.tensor([[1.0]]), "c": torch.tensor([[1.0]])}
    # a: |I|^2 / |I|^2 = 1; b: 2^2 / 1 = 4; c is not weighted and must not count.
    stats = Statistics({n: 4 * g for n, g in grams.items()}, {n: 4 for n in grams}, {})  # sums over 4 positions
    targets = Targets({}, style, {}, {n: t.square().sum() for n, t in style.items()})
    weights = Weights(1.0, 1.0, 0.0, {}, {"a": 0.25, "b": 0.75})
    terms = loss_terms(stats, targets, weights, torch.zeros(1, 3, 2, 2))
    assert terms["style"].item() == pytest.approx(0.25 * 1 + 0.75 * 4)
    assert terms["total"].item() == pytest.approx(0.25 * 1 + 0.75 * 4) and terms["content"].item() == 0.0


def test_blend_grams_normalises_the_weights() -> None:
    per_style = [{"a": torch.eye(2), "b": torch.ones(1, 1)}, {"a": 4 * torch.eye(2), "b": 2 * torch.ones(1, 1)}]
    blended = losses.blend_grams(per_style, [1.0, 3.0])
    torch.testing.assert_close(blended["a"], 3.25 * torch.eye(2))
    torch.testing.assert_close(blended["b"], torch.tensor([[1.75]]))
    scaled = losses.blend_grams(per_style, [2.0, 6.0])  # same ratio, same blend
    torch.testing.assert_close(scaled["a"], blended["a"])
    torch.testing.assert_close(losses.blend_grams(per_style[:1], [5.0])["a"], torch.eye(2))


@pytest.mark.parametrize(
    "weights, match",
    [([1.0], "2 styles but 1 blend weights"), ([1.0, 2.0, 3.0], "2 styles but 3"),
     ([1.0, -0.5], ">= 0"), ([0.0, 0.0], "positive sum")],
)
def test_blend_grams_rejects_bad_weights(weights: list[float], match: str) -> None:
    per_style = [{"a": torch.eye(2)}, {"a": torch.eye(2)}]
    with pytest.raises(ValueError, match=match):
        losses.blend_grams(per_style, weights)


def test_tv_loss_hand_computed() -> None:
    image = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 6.0]]]])  # (1, 1, 2, 3)
    # dx = [[1, 2], [0, 4]] -> mean square 21 / 4; dy = [[2, 1, 3]] -> mean square 14 / 3.
    assert losses.tv_loss(image).item() == pytest.approx(21 / 4 + 14 / 3)
    assert losses.tv_loss(torch.full((1, 3, 4, 5), 0.3)).item() == 0.0


def test_normalised_weights() -> None:
    assert losses.normalised_weights({"a": 1.0, "b": 3.0}) == {"a": 0.25, "b": 0.75}
    assert losses.normalised_weights({"a": 2.0}) == {"a": 1.0}
    assert losses.normalised_weights({}) == {}
    with pytest.raises(ValueError, match="positive sum"):
        losses.normalised_weights({"a": 0.0, "b": 0.0})
    with pytest.raises(ValueError, match=">= 0"):
        losses.normalised_weights({"a": 2.0, "b": -1.0})


# --- gradients, float64 -------------------------------------------------------------------------

def _f64(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_style_loss_gradient_matches_finite_differences() -> None:
    features = _f64(1, 3, 4, 5, seed=1).requires_grad_(True)
    target = losses.gram(_f64(1, 3, 6, 3, seed=2))
    assert torch.autograd.gradcheck(lambda f: losses.relative_error(losses.gram(f), target), (features,))


def test_content_loss_gradient_matches_finite_differences() -> None:
    features = _f64(1, 3, 4, 5, seed=3).requires_grad_(True)
    target = _f64(1, 3, 4, 5, seed=4)
    assert torch.autograd.gradcheck(lambda f: losses.relative_error(f, target), (features,))


def test_tv_loss_gradient_matches_finite_differences() -> None:
    image = _f64(1, 3, 4, 5, seed=5).requires_grad_(True)
    assert torch.autograd.gradcheck(losses.tv_loss, (image,))


def test_style_gradient_has_the_closed_form_the_tiling_relies_on() -> None:
    # L = |G - A|^2 / |A|^2 with G = F F^T / M  =>  dL/dF = 4 / (M |A|^2) (G - A) F   (DESIGN.md 6)
    features = _f64(1, 3, 4, 5, seed=6).requires_grad_(True)
    target = losses.gram(_f64(1, 3, 4, 5, seed=7))
    (grad,) = torch.autograd.grad(losses.relative_error(losses.gram(features), target), features)
    flat = features.detach().reshape(3, 20)
    expected = 4 / (20 * target.square().sum()) * (losses.gram(features.detach()) - target) @ flat
    torch.testing.assert_close(grad.reshape(3, 20), expected)
