"""Tiled optimisation: the plan covers the image exactly once, and tiled == untiled (DESIGN.md 6)."""

from __future__ import annotations

import pytest
import torch

from hires_nst.config.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, LAYER_NAMES
from hires_nst.core.tiles import Rect, Tile, TileGrid, align_for, plan_tiles, required_halo
from hires_nst.engine.objective import Objective, Weights, make_targets
from hires_nst.engine.optimize import optimize
from hires_nst.engine.tiling import TiledObjective, make_objective
from hires_nst.model.features import VGGFeatures
from hires_nst.model.weights import load_weights
from tests.helpers.objectives import setup_objective
from tests.helpers.synthetic import tiles_for

SIZES = [(160, 224), (157, 203), (224, 160), (17, 5), (64, 64), (300, 33)]  # width, height


def coverage(tiles: list[Tile], width: int, height: int) -> torch.Tensor:
    counts = torch.zeros(height, width, dtype=torch.int32)
    for tile in tiles:
        c = tile.core
        counts[c.top:c.bottom, c.left:c.right] += 1
    return counts


# --------------------------------------------------------------------------- plan


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("tile_size", [16, 64, 100])
def test_cores_cover_every_pixel_exactly_once(width: int, height: int, tile_size: int) -> None:
    tiles = plan_tiles(width, height, tile_size, halo=80)
    assert bool((coverage(tiles, width, height) == 1).all())


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("align", [1, 8, 16])
def test_core_offsets_are_aligned_and_cores_end_aligned_or_at_border(width: int, height: int, align: int) -> None:
    for tile in plan_tiles(width, height, 48, halo=40, align=align):
        c, w = tile.core, tile.window
        assert c.left % align == 0 and c.top % align == 0
        assert w.left % align == 0 and w.top % align == 0
        assert c.right % align == 0 or c.right == width
        assert c.bottom % align == 0 or c.bottom == height
        assert w.right % align == 0 or w.right == width
        assert w.bottom % align == 0 or w.bottom == height


@pytest.mark.parametrize("width,height", SIZES)
def test_windows_are_core_plus_halo_clipped_to_the_image(width: int, height: int) -> None:
    halo = 80
    for tile in plan_tiles(width, height, 64, halo):
        c, w = tile.core, tile.window
        assert w == Rect(max(0, c.left - halo), max(0, c.top - halo),
                         min(width, c.right + halo), min(height, c.bottom + halo))


def test_tile_size_and_halo_are_rounded_to_the_alignment() -> None:
    tiles = plan_tiles(210, 50, 70, halo=20, align=16)  # tile 70 -> 64, halo 20 -> 32
    assert [t.core.left for t in tiles] == [0, 64, 128, 192]
    assert tiles[1].window == Rect(32, 0, 160, 50)
    assert plan_tiles(48, 48, 5, halo=0, align=16)[1].core == Rect(16, 0, 32, 16)  # at least one align


def test_a_sliver_narrower_than_the_alignment_joins_the_last_core() -> None:
    tiles = plan_tiles(130, 16, 64, halo=0)
    assert [t.core for t in tiles] == [Rect(0, 0, 64, 16), Rect(64, 0, 130, 16)]
    assert [t.core.right for t in plan_tiles(144, 16, 64, halo=0)] == [64, 128, 144]


@pytest.mark.parametrize("width,height", [(100, 60), (64, 64), (157, 203)])
def test_a_tile_larger_than_the_image_is_one_tile(width: int, height: int) -> None:
    assert plan_tiles(width, height, 256, 96) == [Tile(Rect(0, 0, width, height), Rect(0, 0, width, height))]


def test_core_in_window_follows_the_pooling_floors_at_the_border() -> None:
    # 157 px wide: conv5_1 maps are 157 >> 4 = 9 wide; the last core owns column 8 there.
    tile = plan_tiles(157, 16, 64, 80)[-1]
    assert tile.core == Rect(128, 0, 157, 16) and tile.window == Rect(48, 0, 157, 16)
    assert tile.core_in_window(4) == (slice(0, 1), slice(5, 6))
    assert tile.core_in_window(0) == (slice(0, 16), slice(80, 109))


def test_bad_plans_are_refused() -> None:
    from hires_nst.errors import ConfigError

    for args in [(0, 10, 64, 0), (10, 10, 0, 0), (10, 10, 64, -1)]:
        with pytest.raises(ConfigError):
            plan_tiles(*args)
    with pytest.raises(ConfigError):
        plan_tiles(10, 10, 64, 0, align=12)


# --------------------------------------------------------------------------- halo


def test_required_halo_for_the_default_layers_is_within_the_design_bound() -> None:
    layers = DEFAULT_CONTENT_LAYERS + DEFAULT_STYLE_LAYERS
    assert align_for(layers) == 16
    assert required_halo(layers) == required_halo(["conv5_1"]) <= 96
    assert required_halo(layers) % 16 == 0


def test_required_halo_grows_with_depth_and_is_a_multiple_of_the_alignment() -> None:
    halos = [required_halo([name]) for name in LAYER_NAMES]
    assert halos == sorted(halos) and halos[0] < halos[-1]
    for name, halo in zip(LAYER_NAMES, halos, strict=True):
        assert halo % align_for([name]) == 0
    assert required_halo(["relu5_1"]) == required_halo(["conv5_1"])


@pytest.mark.parametrize("layer", ["conv2_2", "conv3_1", "conv4_1", "conv5_1"])
def test_required_halo_is_exact_and_one_step_less_is_not(layer: str) -> None:
    """A core with the required halo on both sides sees the untiled features; one align less does not."""
    extractor = VGGFeatures(load_weights("original"), [layer])
    align, halo, depth = align_for([layer]), required_halo([layer]), int(layer[4]) - 1
    image = torch.rand(1, 3, 16, 2 * halo + 3 * align, generator=torch.Generator().manual_seed(1))
    core = Rect(halo, 0, halo + align, 16)
    with torch.no_grad():
        full = extractor(image)[layer]
        c = core.at_depth(depth)
        expected = full[:, :, c.top:c.bottom, c.left:c.right]
        for h, exact in [(halo, True), (halo - align, False)]:
            tile = Tile(core, Rect(core.left - h, 0, core.right + h, 16))
            rows, cols = tile.core_in_window(depth)
            got = extractor(image[:, :, :, tile.window.left:tile.window.right])[layer][:, :, rows, cols]
            error = float((got - expected).abs().max() / expected.abs().max())
            assert (error < 1e-6) == exact, (h, error)


# --------------------------------------------------------------------------- objective


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def assert_same_terms(got: dict, expected: dict) -> None:
    for key in ("total", "content", "style", "tv"):
        assert abs(float(got[key]) - float(expected[key])) <= 1e-5 * abs(float(expected[key])), key


@pytest.mark.slow
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_tiled_loss_and_gradient_equal_the_untiled_ones(pooling: str) -> None:
    width, height = 160, 224
    extractor, targets, weights, image = setup_objective(pooling, width, height)
    objective = make_objective(extractor, targets, weights, tiles_for(extractor, width, height, 64))
    assert isinstance(objective, TiledObjective) and len(objective.tiles) == 3 * 4
    untiled_image, tiled_image = image.clone(), image.clone()
    untiled = Objective(extractor, targets, weights)(untiled_image)
    assert_same_terms(objective(tiled_image), untiled)
    assert relative(tiled_image.grad, untiled_image.grad) < 1e-4


@pytest.mark.slow
def test_a_short_tiled_render_ends_where_the_untiled_one_does() -> None:
    # Shallow layers keep this fast; conv3_1 is both a content and a style layer here, so the two
    # gradients of one layer must add up. The default layers are pinned by the test above.
    width, height = 128, 96
    extractor, targets, weights, image = setup_objective("max", width, height, ("conv3_1",),
                                                         ("conv1_1", "conv2_1", "conv3_1"), tv=0.0)
    tiled = make_objective(extractor, targets, weights, tiles_for(extractor, width, height, 64))
    assert isinstance(tiled, TiledObjective) and len(tiled.tiles) == 4
    untiled = Objective(extractor, targets, weights)
    results = [optimize(image, objective, optimizer="lbfgs", lr=1.0, iterations=5) for objective in (untiled, tiled)]
    assert float((results[0] - results[1]).abs().mean()) < 1 / 255
    assert float((results[0] - image).abs().mean()) > 1 / 255  # it did move
    assert_same_terms(tiled.loss(results[0]), untiled.loss(results[0]))


def test_tiled_targets_equal_the_untiled_ones() -> None:
    weights = Weights.equal_layers(1.0, 10.0, 0.0, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS)
    extractor = VGGFeatures(load_weights("original"), DEFAULT_CONTENT_LAYERS + DEFAULT_STYLE_LAYERS, "max")
    g = torch.Generator().manual_seed(2)
    content = torch.rand(1, 3, 83, 150, generator=g)
    styles = [torch.rand(1, 3, 120, 70, generator=g), torch.rand(1, 3, 40, 48, generator=g)]
    expected = make_targets(extractor, content, styles, [0.7, 0.3], weights)
    got = make_targets(extractor, content, styles, [0.7, 0.3], weights,
                       grid=TileGrid.for_layers(extractor.layers, 64))  # 6 + 4 + 1 tiles
    for name in weights.style_layers:
        assert relative(got.style[name], expected.style[name]) < 1e-5, name
        assert torch.allclose(got.style_norms[name], expected.style_norms[name], rtol=1e-5)
    for name in weights.content_layers:
        assert got.content[name].shape == expected.content[name].shape
        assert relative(got.content[name], expected.content[name]) < 1e-5, name


def test_make_objective_is_untiled_when_one_tile_covers_the_image() -> None:
    extractor = VGGFeatures(load_weights("original"), ["conv1_1"])
    weights = Weights.equal_layers(0.0, 1.0, 0.0, [], ["conv1_1"])
    targets = make_targets(extractor, None, [torch.rand(1, 3, 16, 16)], [1.0], weights)
    assert type(make_objective(extractor, targets, weights, tiles_for(extractor, 100, 80, None))) is Objective
    assert type(make_objective(extractor, targets, weights, tiles_for(extractor, 100, 80, 128))) is Objective
    assert type(make_objective(extractor, targets, weights, tiles_for(extractor, 100, 80, 100))) is Objective
    tiled = make_objective(extractor, targets, weights, tiles_for(extractor, 100, 80, 64))
    assert isinstance(tiled, TiledObjective) and len(tiled.tiles) == 4
    assert tiled.tiles[0].window == Rect(0, 0, 65, 65)  # conv1_1 needs a 1 px halo
