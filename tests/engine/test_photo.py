"""Photo mode in the engine: the Matting Laplacian regulariser is exact under tiling and over ranks,
and a photo-mode render keeps the photo's edges where painting mode does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hires_nst.config.settings import resolve
from hires_nst.core import matting
from hires_nst.core.photoscore import edge_agreement
from hires_nst.engine.objective import Objective
from hires_nst.engine.render import RenderJob, render
from hires_nst.engine.tiling import TiledObjective, make_objective
from hires_nst.io import images
from hires_nst.runtime import ranks
from tests.helpers.objectives import CONTENT_LAYERS, STYLE_LAYERS, band_evaluations, problem, setup_objective
from tests.helpers.paths import CONTENT, STYLE
from tests.helpers.synthetic import tiles_for

CPU = torch.device("cpu")
TERMS = ("total", "content", "style", "tv", "photo")


def test_the_photo_term_is_the_regulariser_of_the_image_and_adds_its_weight_times_it_to_the_total() -> None:
    extractor, targets, weights, image = setup_objective("max", 48, 40, CONTENT_LAYERS, STYLE_LAYERS, photo=250.0)
    terms = Objective(extractor, targets, weights).loss(image)
    assert targets.matting is not None
    expected = matting.regulariser(targets.matting, image)
    assert float(terms["photo"]) == pytest.approx(float(expected), rel=1e-6) and float(expected) > 0
    without = float(terms["content"]) + 10.0 * float(terms["style"]) + 0.1 * float(terms["tv"])
    assert float(terms["total"]) == pytest.approx(without + 250.0 * float(expected), rel=1e-6)
    _, plain_targets, plain, _ = setup_objective("max", 48, 40, CONTENT_LAYERS, STYLE_LAYERS)
    assert plain_targets.matting is None and "photo" not in Objective(extractor, plain_targets, plain).loss(image)


@pytest.mark.slow
def test_tiled_photo_mode_loss_and_gradient_equal_the_untiled_ones() -> None:
    width, height = 112, 96
    extractor, targets, weights, image = setup_objective("max", width, height, CONTENT_LAYERS, STYLE_LAYERS,
                                                         photo=500.0)
    tiled = make_objective(extractor, targets, weights, tiles_for(extractor, width, height, 32))
    assert isinstance(tiled, TiledObjective) and len(tiled.tiles) > 4
    untiled_image, tiled_image = image.clone(), image.clone()
    expected = Objective(extractor, targets, weights)(untiled_image)
    got = tiled(tiled_image)
    for key in TERMS:
        assert float(got[key]) == pytest.approx(float(expected[key]), rel=1e-5), key
    photo_grad = 500.0 * matting.quadratic_and_gradient(targets.matting, image)[1]
    assert float(photo_grad.norm()) > 0.1 * float(untiled_image.grad.norm())  # the term matters in the gradient
    assert float((tiled_image.grad - untiled_image.grad).norm() / untiled_image.grad.norm()) < 1e-5


def photo_on_ranks(world: ranks.World) -> dict:
    """On every rank: one photo-mode evaluation per band layout (one window, 16 px tiles)."""
    evaluations = band_evaluations(world, *problem(photo=500.0))
    return {name: (terms, grad, loss) for name, (terms, grad, loss, _) in evaluations.items()}


@pytest.mark.slow
def test_two_ranks_give_the_single_process_photo_mode_loss_and_gradient() -> None:
    extractor, weights, targets, image = problem(photo=500.0)
    single = image.clone()
    expected = Objective(extractor, targets, weights)(single)
    got = ranks.launch(photo_on_ranks, [CPU, CPU], (), ())
    for name in ("one window", "tiled"):
        terms, grad, loss_only = got[name]
        for key in TERMS:
            assert terms[key] == pytest.approx(float(expected[key]), rel=1e-5), (name, key)
            assert float(loss_only[key]) == pytest.approx(float(expected[key]), rel=1e-5), (name, key)
        assert float((grad - single.grad).norm() / single.grad.norm()) < 1e-5, name


@pytest.mark.slow
def test_a_64px_photo_mode_render_keeps_the_photos_edges_better_than_painting_mode(tmp_path: Path) -> None:
    def render_edges(name: str, **loss: object) -> float:
        config = resolve(("test", {"pyramid": {"max_size": 64, "iterations": [60]},
                                   "loss": {"style_loss": "w2", **loss}, "device": {"precision": "fp32"},
                                   "output": {"work_dir": str(tmp_path / name)}}))
        result = render(RenderJob(CONTENT, (STYLE,), tmp_path / f"{name}.png", config))
        out = images.load_image(result.output)
        photo = images.resize(images.load_image(CONTENT), out.shape[1], out.shape[0])
        return edge_agreement(out, photo)

    painting, photo = render_edges("painting"), render_edges("photo", photo=True)
    assert photo > painting + 0.1, (photo, painting)
    assert np.isfinite(painting) and painting < 0.9


def test_the_last_pass_runs_through_a_render_and_brings_the_photos_edges_back(tmp_path: Path) -> None:
    def render_photo(smooth: str) -> np.ndarray:
        config = resolve(("test", {"pyramid": {"max_size": 48, "iterations": [15]},
                                   "loss": {"style_loss": "w2", "photo": True, "photo_smooth": smooth},
                                   "device": {"precision": "fp32"}, "output": {"work_dir": str(tmp_path / smooth)}}))
        return images.load_image(render(RenderJob(CONTENT, (STYLE,), tmp_path / f"{smooth}.png", config)).output)

    outputs = {smooth: render_photo(smooth) for smooth in ("off", "guided", "affinity")}
    photo = images.resize(images.load_image(CONTENT), outputs["off"].shape[1], outputs["off"].shape[0])
    edges = {smooth: edge_agreement(out, photo) for smooth, out in outputs.items()}
    for smooth in ("guided", "affinity"):
        assert outputs[smooth].shape == outputs["off"].shape
        assert float(np.abs(outputs[smooth] - outputs["off"]).mean()) > 1e-3  # the pass ran on the output
        assert edges[smooth] > edges["off"], edges  # guided by the photo: its edges come back
