"""The coarse-to-fine loop: each stage starts from the previous result, upsampled.

Large-scale structure is settled cheaply at the first (small) stage; later stages only add detail.
Targets (content features, style Grams) are recomputed at every stage from the full-resolution
inputs, area-downsampled to the stage's size.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from hires_nst import images
from hires_nst.checkpoints import WorkDir
from hires_nst.config import RenderConfig
from hires_nst.events import Message, Sink, StageFinished, StageStarted, Step
from hires_nst.features import VGGFeatures
from hires_nst.objective import Objective, Weights, make_targets
from hires_nst.optimize import optimize_with_state, resize_adam_state
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


def style_size(style: np.ndarray, stage: Stage, style_scale: float, upscale: bool = False) -> tuple[int, int]:
    """Style long side = ``style_scale`` x the stage's long side, not above the style's own size
    unless ``upscale`` (an enlarged painting has no brushwork finer than its scan)."""
    height, width = style.shape[:2]
    long_side = round(stage.long_side * style_scale)
    if not upscale:
        long_side = min(long_side, max(width, height))
    return fit_long_side(width, height, max(16, long_side))


def stage_inputs(content: np.ndarray, styles: Sequence[np.ndarray], stage: Stage, config: RenderConfig,
                 device: torch.device) -> StageInputs:
    scale, upscale = config.pyramid.style_scale, config.pyramid.style_upscale
    content_t = images.to_tensor(images.resize(content, stage.width, stage.height)).to(device)
    style_ts = [images.to_tensor(images.resize(s, *style_size(s, stage, scale, upscale))).to(device) for s in styles]
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


@dataclass
class Checkpointing:
    """Where finished stages go, and how often the stage in progress is saved (0: never)."""

    workdir: WorkDir
    save_every: int = 0


@dataclass
class StageResult:
    image: Tensor  # (1, 3, H, W) in [0, 1]
    losses: dict[str, float]  # final losses at this stage
    optimizer_state: dict[str, Tensor]  # Adam's moments (empty for L-BFGS)


def run_stage(extractor: VGGFeatures, inputs: StageInputs, start: Tensor, stage: Stage, stages: int,
              config: RenderConfig, sink: Sink, checkpointing: Checkpointing | None = None,
              warm_state: dict[str, Tensor] | None = None) -> StageResult:
    """Optimise one stage."""
    weights = loss_weights(config)
    targets = make_targets(extractor, inputs.content, inputs.styles, config.loss.style_blend, weights)
    objective = Objective(extractor, targets, weights)
    sink(StageStarted(stage.index, stages, stage.width, stage.height, stage.iterations))
    began = time.perf_counter()
    save_every = checkpointing.save_every if checkpointing else 0

    def on_step(iteration: int, values: dict[str, float], seconds: float, image: Tensor) -> None:
        sink(Step(stage.index, iteration, stage.iterations, values, seconds))
        if save_every and iteration % save_every == 0 and checkpointing is not None:
            checkpointing.workdir.save_current(image)

    result, state = optimize_with_state(start, objective, optimizer=config.optim.optimizer, lr=config.lr,
                                        iterations=stage.iterations, on_step=on_step, warm_state=warm_state)
    final = {k: float(v) for k, v in objective.loss(result).items()}
    sink(StageFinished(stage.index, stage.width, stage.height, time.perf_counter() - began, final))
    return StageResult(result, final, state)


def run_pyramid(extractor: VGGFeatures, content: np.ndarray, styles: Sequence[np.ndarray],
                schedule: Sequence[Stage], config: RenderConfig, init: str | np.ndarray,
                device: torch.device, sink: Sink, checkpointing: Checkpointing | None = None,
                done: int = 0) -> tuple[Tensor, list[dict[str, float]]]:
    """Run the stages of ``schedule`` after the first ``done`` (taken from the work dir).

    Returns the final image (1, 3, H, W) in [0, 1] and every stage's final losses.
    """
    height, width = content.shape[:2]
    if max(schedule[-1].width, schedule[-1].height) > max(width, height):
        sink(Message(f"the content image ({width}x{height}) is upscaled to the output size "
                     f"{schedule[-1].width}x{schedule[-1].height}: fine detail comes from the style alone"))
    image: Tensor | None = None
    state: dict[str, Tensor] = {}
    stage_losses: list[dict[str, float]] = []
    if done:
        assert checkpointing is not None
        image, state = checkpointing.workdir.load_stage(done - 1)
        image = image.to(device)
        stage_losses = [checkpointing.workdir.stage_losses(i) for i in range(done)]
        sink(Message(f"resuming: {done} of {len(schedule)} stages already done in {checkpointing.workdir.path}"))
    for stage in schedule[done:]:
        if checkpointing is not None:
            checkpointing.workdir.set_status("running", stage=stage.index, stages=len(schedule))
        inputs = stage_inputs(content, styles, stage, config, device)
        start = initial_image(init, inputs, config.optim.seed) if image is None else upsample(image, stage)
        warm = resize_adam_state(state, stage.height, stage.width) if state and config.optim.warm_start else None
        result = run_stage(extractor, inputs, start, stage, len(schedule), config, sink, checkpointing, warm)
        image, state = result.image, result.optimizer_state
        stage_losses.append(result.losses)
        if checkpointing is not None:
            checkpointing.workdir.save_stage(stage, schedule, image, state, result.losses)
    assert image is not None
    return image, stage_losses
