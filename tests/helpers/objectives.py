"""Seeded objectives on the original weights, built the same way by the tests of several layers
(tiled == untiled, ranks == one process, w2 == gram plumbing)."""

from __future__ import annotations

import dataclasses

import torch

from hires_nst.config.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
from hires_nst.core.bands import BandPlan, plan_bands
from hires_nst.core.tiles import align_for, required_halo
from hires_nst.engine.distributed import BandObjective
from hires_nst.engine.objective import Weights, make_targets
from hires_nst.model.features import VGGFeatures
from hires_nst.model.weights import load_weights
from hires_nst.runtime import ranks
from hires_nst.runtime.placement import FP32

# Shallow layers keep the halo at 12 px, so that the bands of a small image really are apart.
CONTENT_LAYERS, STYLE_LAYERS = ("conv2_1",), ("conv1_1", "conv2_1", "conv3_1")
HALO, ALIGN = required_halo(CONTENT_LAYERS + STYLE_LAYERS), align_for(CONTENT_LAYERS + STYLE_LAYERS)


def setup_objective(pooling: str, width: int, height: int, content_layers=DEFAULT_CONTENT_LAYERS,
                    style_layers=DEFAULT_STYLE_LAYERS, tv: float = 0.1, style_loss: str = "gram", photo: float = 0.0):
    """Original weights, a seeded content image, two styles blended 0.7/0.3, a start image near the content."""
    weights = dataclasses.replace(Weights.equal_layers(1.0, 10.0, tv, content_layers, style_layers),
                                  style_loss=style_loss, photo=photo)
    extractor = VGGFeatures(load_weights("original"), tuple(content_layers) + tuple(style_layers), pooling)
    g = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, height, width, generator=g)
    styles = [torch.rand(1, 3, 96, 80, generator=g), torch.rand(1, 3, 64, 112, generator=g)]
    targets = make_targets(extractor, content, styles, [0.7, 0.3], weights)
    image = (0.5 * content + 0.5 * torch.rand(1, 3, height, width, generator=g)).clamp(0, 1)
    return extractor, targets, weights, image


def problem(photo: float = 0.0):
    """A 96 x 64 problem on the shallow layers above, for bands over ranks: every rank builds the same
    (``photo``: with photo mode's regulariser at that weight)."""
    extractor = VGGFeatures(load_weights("original"), CONTENT_LAYERS + STYLE_LAYERS)
    # The paper's loss by name: spawned ranks build this too, outside conftest's switch.
    weights = Weights.equal_layers(1.0, 10.0, 0.1, CONTENT_LAYERS, STYLE_LAYERS, "gram", photo)
    g = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, 64, 96, generator=g)
    styles = [torch.rand(1, 3, 48, 40, generator=g), torch.rand(1, 3, 32, 56, generator=g)]
    targets = make_targets(extractor, content, styles, [0.7, 0.3], weights)
    image = (0.5 * content + 0.5 * torch.rand(1, 3, 64, 96, generator=g)).clamp(0, 1)
    return extractor, weights, targets, image


def band_evaluations(world: ranks.World, extractor, weights, targets, image) -> dict:
    """On every rank, one evaluation of ``problem()``'s objective per band layout ("one window", "tiled"
    in 16 px tiles): layout -> (loss terms as floats, the gradient, ``loss`` alone, the objective)."""
    out: dict = {}
    for name, tile in (("one window", None), ("tiled", 16)):
        plan = BandPlan(tuple(plan_bands(96, 64, world.size, HALO, ALIGN)), tile, HALO, ALIGN)
        objective = BandObjective(world, extractor, targets, weights, plan, 96, 64, FP32)
        leaf = image.clone()
        terms = objective(leaf)
        out[name] = ({k: float(v) for k, v in terms.items()}, leaf.grad, objective.loss(image), objective)
    return out
