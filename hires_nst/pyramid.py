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

import torch.nn.functional as F

from hires_nst import images, losses
from hires_nst.backbones import FeatureExtractor, alias, get_backbone
from hires_nst.checkpoints import WorkDir
from hires_nst.config import RenderConfig, parse_layer_weights
from hires_nst.events import Message, Sink, Snapshot, StageFinished, StageStarted, Step
from hires_nst.errors import DeviceError
from hires_nst.features import VGG_BLOCKS
from hires_nst.objective import Weights
from hires_nst.optimize import optimize_with_state, resize_adam_state
from hires_nst.placement import (MEMORY_MARGIN, MIN_TILE, auto_tile_size, available_bytes, peak_memory_bytes,
                                 reset_peak_memory)
from hires_nst.schedule import Stage, fit_long_side
from hires_nst.tiling import align_for, make_objective, make_tiled_targets, plan_tiles, required_halo


@dataclass
class StageInputs:
    """Everything one stage optimises against, on the device."""

    content: Tensor  # (1, 3, H, W) at the stage size
    styles: list[Tensor]  # each (1, 3, h, w) at its own stage size


def loss_weights(config: RenderConfig) -> Weights:
    """The loss weights; style layers weighted by ``--style-layer-weights`` (equal by default)."""
    loss = config.loss
    layer_weights = parse_layer_weights(loss.style_layer_weights, loss.style_layers)
    if layer_weights is None:
        return Weights.equal_layers(loss.content_weight, loss.style_weight, loss.tv_weight,
                                    loss.content_layers, loss.style_layers)
    style: dict[str, float] = {}
    for name, weight in zip(loss.style_layers, layer_weights):  # a layer named twice (relu1_1, conv1_1) adds up
        style[alias(name)] = style.get(alias(name), 0.0) + weight
    content = losses.normalised_weights({alias(n): 1.0 for n in loss.content_layers})
    return Weights(loss.content_weight, loss.style_weight, loss.tv_weight, content, losses.normalised_weights(style))


@dataclass(frozen=True)
class Tiling:
    """How one stage is split: ``tile`` None means untiled."""

    tile: int | None
    halo: int
    tiles: int  # how many windows each pass runs


def stage_tiling(config: RenderConfig, stage: Stage, device: torch.device, tile: int | None | str = "config") -> Tiling:
    """The tiling of ``stage`` from ``--tile-size`` (auto: measured free memory), or a forced ``tile``.

    Backbones that cannot be tiled exactly (ResNet) always run untiled.
    """
    backbone = get_backbone(config.model.backbone)
    if not backbone.tileable:
        return Tiling(None, 0, 1)
    layers = [*config.loss.content_layers, *config.loss.style_layers]
    halo = config.tiling.halo or required_halo(layers, VGG_BLOCKS[backbone.name])
    if tile == "config":
        setting = config.tiling.tile_size
        if setting == "off":
            tile = None
        elif setting == "auto":
            budget = int(available_bytes(device) * MEMORY_MARGIN[device.type])
            tile = auto_tile_size(stage.width, stage.height, halo, budget, align_for(layers))
        else:
            tile = int(setting)
    count = len(plan_tiles(stage.width, stage.height, tile, halo, align_for(layers))) if tile else 1
    return Tiling(tile if count > 1 else None, halo, count)


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and ("out of memory" in str(exc) or "can't allocate memory" in str(exc))


def smaller_tiling(config: RenderConfig, stage: Stage, device: torch.device, tiling: Tiling) -> Tiling:
    """Half the tile (or, untiled, half the long side); DeviceError below the smallest tile."""
    current = tiling.tile or stage.long_side
    if not get_backbone(config.model.backbone).tileable:
        raise DeviceError(f"out of memory at stage {stage.index + 1} ({stage.width}x{stage.height}); "
                          f"{config.model.backbone} renders cannot be tiled: free device memory or lower --max-size")
    if current // 2 < MIN_TILE:
        raise DeviceError(f"out of memory at stage {stage.index + 1} ({stage.width}x{stage.height}) even with "
                          f"{current} px tiles; free device memory or lower --max-size")
    return stage_tiling(config, stage, device, tile=current // 2)


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
    """What a render leaves behind while it runs: finished stages in the work dir, the stage in
    progress every ``save_every`` iterations, and a ``Snapshot`` event every ``snapshot_every``
    iterations (0: never) with the image shrunk to at most ``snapshot_size`` px (long side)."""

    workdir: WorkDir
    save_every: int = 0
    snapshot_every: int = 0
    snapshot_size: int = 512


def snapshot(stage: Stage, iteration: int, image: Tensor, size: int) -> Snapshot:
    """The image as a small array: shrunk on its device (area averaging) before it is copied off."""
    height, width = image.shape[-2:]
    if max(height, width) > size:
        width, height = fit_long_side(width, height, size)
        image = F.interpolate(image.detach().float(), size=(height, width), mode="area")
    return Snapshot(stage.index, iteration, images.to_array(image))


@dataclass
class StageResult:
    image: Tensor  # (1, 3, H, W) in [0, 1]
    losses: dict[str, float]  # final losses at this stage
    optimizer_state: dict[str, Tensor]  # Adam's or AdamW's moments (empty for the others)


def run_stage(extractor: FeatureExtractor, inputs: StageInputs, start: Tensor, stage: Stage, stages: int,
              config: RenderConfig, sink: Sink, checkpointing: Checkpointing | None = None,
              warm_state: dict[str, Tensor] | None = None, tiling: Tiling | None = None) -> StageResult:
    """Optimise one stage, tiled when ``tiling.tile`` is set."""
    weights = loss_weights(config)
    tile, halo = (tiling.tile, tiling.halo) if tiling else (None, None)
    targets = make_tiled_targets(extractor, inputs.content, inputs.styles, config.loss.style_blend, weights, tile, halo)
    objective = make_objective(extractor, targets, weights, stage.width, stage.height, tile, halo)
    sink(StageStarted(stage.index, stages, stage.width, stage.height, stage.iterations))
    began = time.perf_counter()
    save_every = checkpointing.save_every if checkpointing else 0
    snapshot_every = checkpointing.snapshot_every if checkpointing else 0
    reset_peak_memory(start.device)

    def on_step(iteration: int, values: dict[str, float], seconds: float, image: Tensor) -> None:
        sink(Step(stage.index, iteration, stage.iterations, values, seconds, peak_memory_bytes(image.device)))
        if save_every and iteration % save_every == 0 and checkpointing is not None:
            checkpointing.workdir.save_current(image)
        if snapshot_every and checkpointing is not None and (
                iteration % snapshot_every == 0 or iteration == stage.iterations):
            sink(snapshot(stage, iteration, image, checkpointing.snapshot_size))

    result, state = optimize_with_state(start, objective, optimizer=config.optim.optimizer, lr=config.lr,
                                        iterations=stage.iterations, on_step=on_step, warm_state=warm_state)
    final = {k: float(v) for k, v in objective.loss(result).items()}
    sink(StageFinished(stage.index, stage.width, stage.height, time.perf_counter() - began, final))
    return StageResult(result, final, state)


def run_stage_fitting_memory(extractor: FeatureExtractor, inputs: StageInputs, start: Tensor, stage: Stage, stages: int,
                             config: RenderConfig, sink: Sink, checkpointing: Checkpointing | None,
                             warm_state: dict[str, Tensor] | None) -> StageResult:
    """``run_stage``; after an out-of-memory error, the stage starts again with half the tile size."""
    tiling = stage_tiling(config, stage, start.device)
    while True:
        try:
            return run_stage(extractor, inputs, start, stage, stages, config, sink, checkpointing, warm_state, tiling)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
        smaller = smaller_tiling(config, stage, start.device, tiling)
        was = f"{tiling.tile} px tiles" if tiling.tile else "untiled"
        sink(Message(f"out of memory at stage {stage.index + 1} ({was}); retrying it with {smaller.tile} px tiles"))
        if start.device.type == "cuda":
            torch.cuda.empty_cache()
        tiling = smaller


def run_pyramid(extractor: FeatureExtractor, content: np.ndarray, styles: Sequence[np.ndarray],
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
        if stage.index == done and checkpointing is not None and checkpointing.snapshot_every:
            sink(snapshot(stage, 0, start, checkpointing.snapshot_size))  # the animation's first frame
        warm = resize_adam_state(state, stage.height, stage.width) if state and config.optim.warm_start else None
        result = run_stage_fitting_memory(extractor, inputs, start, stage, len(schedule), config, sink,
                                          checkpointing, warm)
        image, state = result.image, result.optimizer_state
        stage_losses.append(result.losses)
        if checkpointing is not None:
            checkpointing.workdir.save_stage(stage, schedule, image, state, result.losses)
    assert image is not None
    return image, stage_losses
