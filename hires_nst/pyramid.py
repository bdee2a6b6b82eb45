"""The coarse-to-fine loop: each stage starts from the previous result, upsampled.

Large-scale structure is settled cheaply at the first (small) stage; later stages only add detail.
Targets (content features, style Grams) are recomputed at every stage from the full-resolution
inputs, area-downsampled to the stage's size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from hires_nst import images
from hires_nst.config import RenderConfig
from hires_nst.events import Message, Sink, StageFinished, StageStarted, Step
from hires_nst.features import VGGFeatures
from hires_nst.objective import Objective, Weights, make_targets
from hires_nst.optimize import optimize
from hires_nst.schedule import Stage, fit_long_side


@dataclass
class StageInputs:
    """Everything one stage optimises against, on the device."""

    content: Tensor  # (1, 3, H, W) at the stage size
    styles: list[Tensor]  # each (1, 3, h, w) at its own stage size


def loss_weights(config: RenderConfig) -> Weights:
    loss = config.loss
    return Weights.equal_layers(loss.content_weight, loss.style_weight, loss.tv_weight,
                                loss.content_layers, loss.style_layers)


def style_size(style: np.ndarray, stage: Stage, style_scale: float) -> tuple[int, int]:
    """Style long side = ``style_scale`` x the stage's long side, never above the style's own size."""
    height, width = style.shape[:2]
    long_side = min(round(stage.long_side * style_scale), max(width, height))
    return fit_long_side(width, height, max(16, long_side))


def stage_inputs(content: np.ndarray, styles: Sequence[np.ndarray], stage: Stage, style_scale: float,
                 device: torch.device) -> StageInputs:
    content_t = images.to_tensor(images.resize(content, stage.width, stage.height)).to(device)
    style_ts = [images.to_tensor(images.resize(s, *style_size(s, stage, style_scale))).to(device) for s in styles]
    return StageInputs(content_t, style_ts)


def initial_image(init: str | np.ndarray, inputs: StageInputs, seed: int) -> Tensor:
    """The first stage's starting point: the content, white noise, or a given image."""
    content = inputs.content
    if isinstance(init, np.ndarray):
        return images.to_tensor(images.resize(init, content.shape[3], content.shape[2])).to(content.device)
    if init == "noise":
        generator = torch.Generator().manual_seed(seed)
        return torch.rand(content.shape, generator=generator).to(content.device)
    return content.clone()


def upsample(image: Tensor, stage: Stage) -> Tensor:
    """The previous stage's result at this stage's size (OpenCV Lanczos, clipped to [0, 1])."""
    array = images.resize(images.to_array(image), stage.width, stage.height)
    return images.to_tensor(array).to(image.device)


def run_stage(extractor: VGGFeatures, inputs: StageInputs, start: Tensor, stage: Stage, stages: int,
              config: RenderConfig, sink: Sink) -> tuple[Tensor, dict[str, float]]:
    """Optimise one stage; returns the image and its final losses."""
    weights = loss_weights(config)
    targets = make_targets(extractor, inputs.content, inputs.styles, config.loss.style_blend, weights)
    objective = Objective(extractor, targets, weights)
    sink(StageStarted(stage.index, stages, stage.width, stage.height, stage.iterations))
    began = time.perf_counter()

    def on_step(iteration: int, values: dict[str, float], seconds: float, _image: Tensor) -> None:
        sink(Step(stage.index, iteration, stage.iterations, values, seconds))

    result = optimize(start, objective, optimizer=config.optim.optimizer, lr=config.lr,
                      iterations=stage.iterations, on_step=on_step)
    final = {k: float(v) for k, v in objective.loss(result).items()}
    sink(StageFinished(stage.index, stage.width, stage.height, time.perf_counter() - began, final))
    return result, final


def run_pyramid(extractor: VGGFeatures, content: np.ndarray, styles: Sequence[np.ndarray],
                schedule: Sequence[Stage], config: RenderConfig, init: str | np.ndarray,
                device: torch.device, sink: Sink,
                on_stage_done: Callable[[Stage, Tensor, dict[str, float]], None] | None = None) -> Tensor:
    """Run every stage in ``schedule``; returns the final image (1, 3, H, W) in [0, 1]."""
    height, width = content.shape[:2]
    if max(schedule[-1].width, schedule[-1].height) > max(width, height):
        sink(Message(f"the content image ({width}x{height}) is upscaled to the output size "
                     f"{schedule[-1].width}x{schedule[-1].height}: fine detail comes from the style alone"))
    image: Tensor | None = None
    for stage in schedule:
        inputs = stage_inputs(content, styles, stage, config.pyramid.style_scale, device)
        start = initial_image(init, inputs, config.optim.seed) if image is None else upsample(image, stage)
        image, final = run_stage(extractor, inputs, start, stage, len(schedule), config, sink)
        if on_stage_done is not None:
            on_stage_done(stage, image, final)
    assert image is not None
    return image
