"""The coarse-to-fine loop: each stage starts from the previous result, upsampled.

Large-scale structure is settled cheaply at the first (small) stage; later stages only add detail.
Targets (content features, style Grams) are recomputed at every stage from the full-resolution
inputs, area-downsampled to the stage's size.
"""

from __future__ import annotations

import dataclasses
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
from hires_nst.events import Message, Sink, Snapshot, StageFinished, StageStarted, Step, null_sink
from hires_nst.errors import DeviceError, OutputError
from hires_nst.features import VGG_BLOCKS
from hires_nst.objective import Weights
from hires_nst.optimize import optimize_with_state, resize_adam_state
from hires_nst.placement import (FULL_IMAGE_BYTES_PER_PIXEL, MEMORY_MARGIN, MIN_TILE, Placement, auto_tile_size,
                                  available_bytes, peak_memory_bytes, reset_peak_memory)
from hires_nst.schedule import Stage, fit_long_side
from hires_nst.bandplan import Spreader
from hires_nst.bands import Band
from hires_nst.distributed import BandObjective, BandPlan, same_start
from hires_nst.tileplan import align_for, plan_tiles, required_halo
from hires_nst.tiling import make_objective, make_tiled_targets


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

    tile: int | None  # on this rank's device, for the whole image (also sizes the targets' tiles)
    halo: int
    tiles: int  # how many windows each pass runs on one device
    bands: BandPlan | None = None  # several ranks: each rank's band (then the objective is theirs together)


def stage_tiling(config: RenderConfig, stage: Stage, device: torch.device, tile: int | None | str = "config",
                 placement: Placement | None = None) -> Tiling:
    """The tiling of ``stage`` on one device from ``--tile-size`` (auto: measured free memory), or a forced ``tile``."""
    backbone = get_backbone(config.model.backbone)
    if not backbone.tileable:  # ResNet: no exact tiling (see backbones.py)
        return Tiling(None, 0, 1)
    halo, align = _halo_align(config)
    value_bytes = placement.precision.bytes_per_value(device) if placement else 4
    if tile == "config":
        setting = config.tiling.tile_size
        if setting == "off":
            tile = None
        elif setting == "auto":
            tile = auto_tile_size(stage.width, stage.height, halo, _budget(device), align, value_bytes)
        else:
            tile = int(setting)
    count = len(plan_tiles(stage.width, stage.height, tile, halo, align)) if tile else 1
    return Tiling(tile if count > 1 else None, halo, count)


def _halo_align(config: RenderConfig) -> tuple[int, int]:
    layers = [*config.loss.content_layers, *config.loss.style_layers]
    backbone = get_backbone(config.model.backbone)
    return config.tiling.halo or required_halo(layers, VGG_BLOCKS[backbone.name]), align_for(layers)


def _budget(device: torch.device) -> int:
    """Bytes this rank may use: its device's free memory with a margin (CPU ranks share the host's)."""
    return int(available_bytes(device) * MEMORY_MARGIN[device.type])


def spreader(config: RenderConfig, placement: Placement) -> Spreader | None:
    """The spreading decisions of a render over several ranks (None on one)."""
    world = placement.world
    if not world.distributed or not get_backbone(config.model.backbone).tileable:
        return None
    halo, align = _halo_align(config)
    value_bytes = placement.precision.bytes_per_value(placement.main)
    cpu_ranks = world.size if placement.main.type == "cpu" else 1  # same host: its memory is shared (local launch)
    setting = config.tiling.tile_size

    def band_tile(band: Band, width: int, height: int) -> int | None:
        if setting not in ("auto", "off"):
            return int(setting)
        bounds = band.bounds
        # Every rank holds the whole image's buffers (image, gradient, optimiser state) besides its band.
        budget = _budget(placement.main) // cpu_ranks - (width * height - bounds.width * bounds.height) * \
            FULL_IMAGE_BYTES_PER_PIXEL
        return auto_tile_size(bounds.width, bounds.height, halo, max(budget, 0), align, value_bytes)

    return Spreader(world, placement, [alias(n) for n in config.loss.style_layers], setting, halo, align, band_tile)


def spread_stage(spread: Spreader | None, stage: Stage, tiling: Tiling, sink: Sink) -> Tiling:
    """``tiling`` with this stage's bands when spreading it over the ranks pays (a collective)."""
    if spread is None:
        return tiling
    plan, gain = spread.plan(stage.width, stage.height, tiling.tile)
    if plan is None:
        return tiling
    sink(Message(f"stage {stage.index + 1}: {len(plan.bands)} bands over {spread.world.size} ranks "
                 f"(modelled {gain:.2f}x faster than one)"))
    return dataclasses.replace(tiling, bands=plan)


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and ("out of memory" in str(exc) or "can't allocate memory" in str(exc))


def smaller_tiling(config: RenderConfig, stage: Stage, device: torch.device, tiling: Tiling,
                   placement: Placement | None = None) -> Tiling:
    """Half the (smallest) tile, or untiled, half the long side; DeviceError below the smallest tile."""
    current = tiling.tile or stage.long_side
    if not get_backbone(config.model.backbone).tileable:
        raise DeviceError(f"out of memory at stage {stage.index + 1} ({stage.width}x{stage.height}); "
                          f"{config.model.backbone} renders cannot be tiled: free device memory or lower --max-size")
    if current // 2 < MIN_TILE:
        raise DeviceError(f"out of memory at stage {stage.index + 1} ({stage.width}x{stage.height}) even with "
                          f"{current} px tiles; free device memory or lower --max-size")
    return stage_tiling(config, stage, device, tile=current // 2, placement=placement)


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
    progress every ``save_every`` iterations and every ``save_minutes`` (resumable, with a PNG to
    look at), and a ``Snapshot`` event every ``snapshot_every`` iterations (0: never) with the
    image shrunk to at most ``snapshot_size`` px (long side). ``schedule`` is the whole pyramid."""

    workdir: WorkDir
    save_every: int = 0
    snapshot_every: int = 0
    snapshot_size: int = 512
    save_minutes: float = 0.0
    schedule: Sequence[Stage] = ()


class ProgressSaves:
    """Saves the stage in progress at the first report after each ``save_every`` iterations or
    ``save_minutes`` minutes; never at the stage's last iteration (the finished stage is saved next).
    A save that fails (a full disk) is reported and tried again later: the render goes on."""

    def __init__(self, checkpointing: Checkpointing, stage: Stage, done: int = 0, sink: Sink = null_sink) -> None:
        self.checkpointing, self.stage, self.sink = checkpointing, stage, sink
        self.at, self.time = done, time.monotonic()

    def due(self, iteration: int) -> bool:
        every, minutes = self.checkpointing.save_every, self.checkpointing.save_minutes
        if iteration >= self.stage.iterations:
            return False
        by_count = bool(every) and iteration // every > self.at // every
        return by_count or (minutes > 0 and time.monotonic() - self.time >= minutes * 60)

    def __call__(self, iteration: int, image: Tensor, optimizer_state: dict[str, Tensor]) -> None:
        if not self.due(iteration):
            return
        workdir = self.checkpointing.workdir
        self.at, self.time = iteration, time.monotonic()
        try:
            workdir.save_progress(self.stage, self.checkpointing.schedule, iteration, image, optimizer_state)
            workdir.save_current(image.clamp(0, 1))
        except OutputError as exc:
            self.sink(Message(f"could not save stage {self.stage.index + 1}'s progress at iteration {iteration} "
                              f"({exc}); the render goes on and tries again later"))


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


def single_placement(extractor: FeatureExtractor, device: torch.device) -> Placement:
    """The placement of a caller that passed none: this extractor on this device, fp32."""
    return Placement((extractor,), (device,))


def run_stage(extractor: FeatureExtractor, inputs: StageInputs, start: Tensor, stage: Stage, stages: int,
              config: RenderConfig, sink: Sink, checkpointing: Checkpointing | None = None,
              warm_state: dict[str, Tensor] | None = None, tiling: Tiling | None = None,
              placement: Placement | None = None, done: int = 0) -> StageResult:
    """Optimise one stage, tiled when ``tiling.tile`` is set, by all ranks together when ``tiling.bands``
    is; ``done`` of its iterations already ran (``start`` is the image they left)."""
    placement = placement or single_placement(extractor, start.device)
    precision = placement.precision
    weights = loss_weights(config)
    tile, halo = (tiling.tile, tiling.halo) if tiling else (None, None)
    # Targets once per stage (every rank: the whole image's; a band objective crops what it reads).
    targets = make_tiled_targets(extractor, inputs.content, inputs.styles, config.loss.style_blend, weights, tile,
                                 halo, precision=precision)
    if tiling is not None and tiling.bands is not None:
        objective = BandObjective(placement.world, extractor, targets, weights, tiling.bands, stage.width,
                                  stage.height, precision)
    else:
        objective = make_objective(extractor, targets, weights, stage.width, stage.height, tile, halo,
                                   precision=precision)
    sink(StageStarted(stage.index, stages, stage.width, stage.height, stage.iterations, done))
    began = time.perf_counter()
    snapshot_every = checkpointing.snapshot_every if checkpointing else 0
    reset_peak_memory(start.device)
    reported = [done]

    def on_step(iteration: int, values: dict[str, float], seconds: float, image: Tensor) -> None:
        previous, reported[0] = reported[0], iteration
        sink(Step(stage.index, iteration, stage.iterations, values, seconds, peak_memory_bytes(image.device),
                  iteration - previous))
        # Steps are reported every placement.sync_every iterations: snapshot at the first report
        # at or after each multiple of snapshot_every, and at the end.
        if snapshot_every and checkpointing is not None and (
                previous // snapshot_every < iteration // snapshot_every or iteration == stage.iterations):
            sink(snapshot(stage, iteration, image, checkpointing.snapshot_size))

    saves = ProgressSaves(checkpointing, stage, done, sink) if checkpointing is not None else None
    result, state = optimize_with_state(start, objective, optimizer=config.optim.optimizer, lr=config.lr,
                                        iterations=stage.iterations, on_step=on_step, warm_state=warm_state,
                                        sync_every=placement.sync_every, done=done, on_state=saves)
    final = {k: float(v) for k, v in objective.loss(result).items()}
    sink(StageFinished(stage.index, stage.width, stage.height, time.perf_counter() - began, final))
    return StageResult(result, final, state)


def run_stage_fitting_memory(extractor: FeatureExtractor, inputs: StageInputs, start: Tensor, stage: Stage, stages: int,
                             config: RenderConfig, sink: Sink, checkpointing: Checkpointing | None,
                             warm_state: dict[str, Tensor] | None, placement: Placement | None = None,
                             done: int = 0, spread: Spreader | None = None) -> StageResult:
    """``run_stage``; after an out-of-memory error, the stage starts again with half the tile size.

    A stage spread over ranks is not retried: the other ranks are waiting in a collective, and
    they cannot learn to start over. It stops with advice instead (``--resume`` continues)."""
    tiling = spread_stage(spread, stage, stage_tiling(config, stage, start.device, placement=placement), sink)
    while True:
        try:
            return run_stage(extractor, inputs, start, stage, stages, config, sink, checkpointing, warm_state, tiling,
                             placement, done)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            if tiling.bands is not None:
                raise DeviceError(f"out of memory on {start.device} at stage {stage.index + 1} "
                                  f"({stage.width}x{stage.height}, {tiling.bands.tile or 'untiled'} px tiles in "
                                  "its band); run again with --resume and a smaller --tile-size") from exc
        smaller = smaller_tiling(config, stage, start.device, tiling, placement)
        was = f"{tiling.tile} px tiles" if tiling.tile else "untiled"
        sink(Message(f"out of memory at stage {stage.index + 1} ({was}); retrying it with {smaller.tile} px tiles"))
        for device in placement.devices if placement else (start.device,):
            if device.type == "cuda":
                with torch.cuda.device(device):
                    torch.cuda.empty_cache()
        tiling = smaller


def _saved_progress(checkpointing: Checkpointing | None, stage: Stage, went: int, start: Tensor,
                    warm: dict[str, Tensor] | None, sink: Sink) -> tuple[Tensor, dict[str, Tensor] | None]:
    """The image (and Adam's state) a resumed stage goes on from after ``went`` saved iterations;
    ``start`` when none. L-BFGS keeps no history across the break (it rebuilds it)."""
    if not went or checkpointing is None:
        return start, warm
    image, state = checkpointing.workdir.load_progress(stage.index)
    sink(Message(f"resuming stage {stage.index + 1} at iteration {went} of {stage.iterations}"))
    return image.to(start.device), state or warm


def run_pyramid(extractor: FeatureExtractor, content: np.ndarray, styles: Sequence[np.ndarray],
                schedule: Sequence[Stage], config: RenderConfig, init: str | np.ndarray,
                device: torch.device, sink: Sink, checkpointing: Checkpointing | None = None,
                done: int = 0, placement: Placement | None = None,
                went: int = 0) -> tuple[Tensor, list[dict[str, float]]]:
    """Run the stages of ``schedule`` after the first ``done`` (taken from the work dir), the first
    of them from its progress saved after ``went`` iterations (``WorkDir.progress``), if any.

    ``placement`` (devices, replicas, precision) defaults to ``extractor`` on ``device`` in fp32.
    Returns the final image (1, 3, H, W) in [0, 1] and every stage's final losses.
    """
    height, width = content.shape[:2]
    if max(schedule[-1].width, schedule[-1].height) > max(width, height):
        sink(Message(f"the content image ({width}x{height}) is upscaled to the output size "
                     f"{schedule[-1].width}x{schedule[-1].height}: fine detail comes from the style alone"))
    image: Tensor | None = None
    state: dict[str, Tensor] = {}
    stage_losses: list[dict[str, float]] = []
    spread = spreader(config, placement) if placement is not None else None
    if done and checkpointing is not None:  # ranks other than 0 have no work dir: they get rank 0's start
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
        first = stage.index == done  # the first stage this run renders: maybe from its saved progress
        if first:
            start, warm = _saved_progress(checkpointing, stage, went, start, warm, sink)
            if checkpointing is not None and checkpointing.snapshot_every:
                sink(snapshot(stage, went, start, checkpointing.snapshot_size))  # the animation's first frame
        if placement is not None and placement.world.distributed:
            start, warm = same_start(placement.world, start, warm)
        result = run_stage_fitting_memory(extractor, inputs, start, stage, len(schedule), config, sink,
                                          checkpointing, warm, placement, went if first else 0, spread)
        image, state = result.image, result.optimizer_state
        stage_losses.append(result.losses)
        if checkpointing is not None:
            checkpointing.workdir.save_stage(stage, schedule, image, state, result.losses)
            checkpointing.workdir.drop_progress(stage.index)
    assert image is not None
    return image, stage_losses
