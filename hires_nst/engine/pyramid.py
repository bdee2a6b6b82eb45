"""The coarse-to-fine loop: each stage starts from the previous result, upsampled.

Large-scale structure is settled cheaply at the first (small) stage; later stages only add detail.
Targets (content features, style Grams) are recomputed at every stage from the full-resolution
inputs, area-downsampled to the stage's size.

Over 300 lines on purpose: the stage loop and its helpers (stage inputs, start images, memory retries)
read best together.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hires_nst.config.schedule import Stage, fit_long_side, shortest_long_side
from hires_nst.config.settings import RenderConfig
from hires_nst.core.guides import RegionGuide
from hires_nst.engine.bandplan import Spreader
from hires_nst.engine.distributed import BandObjective, same_start
from hires_nst.engine.objective import Objective, Targets, make_targets
from hires_nst.engine.optimize import Convergence, Stopped, optimize_with_state, resize_adam_state, shown
from hires_nst.engine.plan import RenderPlan, StagePlan, min_side
from hires_nst.engine.regions import Regions
from hires_nst.engine.resume import Checkpointing, ProgressSaves, saved_progress
from hires_nst.engine.tiling import TiledObjective, make_objective
from hires_nst.errors import DeviceError, classify
from hires_nst.events import Message, Preview, Sink, Snapshot, StageFinished, StageStarted, Step, null_sink
from hires_nst.io import images
from hires_nst.io.preview import PREVIEW_SIZE, PreviewTimer
from hires_nst.runtime.placement import Placement, peak_memory_bytes, reset_peak_memory


@dataclass
class StageInputs:
    """Everything one stage optimises against, on the device."""

    content: Tensor  # (1, 3, H, W) at the stage size
    styles: list[Tensor]  # each (1, 3, h, w) at its own stage size
    regions: RegionGuide | None = None  # --mask / --region: the guides at the stage size


def style_size(style: np.ndarray, stage: Stage, style_scale: float, upscale: bool = False,
               min_short: int = 16) -> tuple[int, int]:
    """Style long side = ``style_scale`` x the stage's long side, not above the style's own size
    unless ``upscale`` (an enlarged painting has no brushwork finer than its scan), and never so
    small that its short side is under ``min_short`` (the network's minimum: a thin strip is enlarged)."""
    height, width = style.shape[:2]
    long_side = round(stage.long_side * style_scale)
    if not upscale:
        long_side = min(long_side, max(width, height))
    return fit_long_side(width, height, max(16, long_side, shortest_long_side(width, height, min_short)))


def stage_inputs(content: np.ndarray, styles: Sequence[np.ndarray], stage: Stage, config: RenderConfig,
                 device: torch.device, regions: Regions | None = None) -> StageInputs:
    scale, upscale, least = config.pyramid.style_scale, config.pyramid.style_upscale, min_side(config)
    content_t = images.to_tensor(images.resize(content, stage.width, stage.height)).to(device)
    style_ts = [images.to_tensor(images.resize(s, *style_size(s, stage, scale, upscale, least))).to(device)
                for s in styles]
    guide = regions.at_stage(stage.width, stage.height, device) if regions is not None else None
    return StageInputs(content_t, style_ts, guide)


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


def snapshot(stage: Stage, iteration: int, image: Tensor, size: int) -> Snapshot:
    """The image as a small array: shrunk on its device (area averaging) before it is copied off."""
    height, width = image.shape[-2:]
    if max(height, width) > size:
        width, height = fit_long_side(width, height, size)
        image = F.interpolate(image.detach().float(), size=(height, width), mode="area")
    return Snapshot(stage.index, iteration, images.to_array(image))


def preview(stage: Stage, iteration: int, image: Tensor) -> Preview:
    return Preview(stage.index, iteration, snapshot(stage, iteration, image, PREVIEW_SIZE).image)


@dataclass
class StageResult:
    image: Tensor  # (1, 3, H, W) in [0, 1]
    losses: dict[str, float]  # final losses at this stage
    optimizer_state: dict[str, Tensor]  # Adam's or AdamW's moments (empty for the others)


@dataclass(frozen=True)
class Run:
    """What every stage of one render shares: its settings, its plan, where it runs, where it reports."""

    config: RenderConfig
    plan: RenderPlan
    placement: Placement
    sink: Sink = null_sink
    checkpointing: Checkpointing | None = None  # None on ranks other than 0: they write nothing
    spreader: Spreader | None = None  # several ranks: decides which stages they share


class StepReporter:
    """``optimize``'s step callback: a ``Step`` event per report, the animation's snapshots and the
    previews (preview.py: at the stage's start and end, and every few seconds).

    Steps are reported every ``placement.sync_every`` iterations: a snapshot is taken at the first
    report at or after each multiple of ``snapshot_every``, and at the stage's end.
    """

    def __init__(self, run: Run, stage: Stage, done: int) -> None:
        self.sink, self.stage, self.reported = run.sink, stage, done
        self.checkpointing = run.checkpointing
        self.every = run.checkpointing.snapshot_every if run.checkpointing else 0
        self.previews = PreviewTimer(run.checkpointing.preview_seconds if run.checkpointing else 0.0)

    def started(self, image: Tensor) -> None:
        if self.previews.due(force=True):
            self.sink(preview(self.stage, self.reported, image))

    def __call__(self, iteration: int, values: dict[str, float], seconds: float, image: Tensor) -> None:
        stage, previous, self.reported = self.stage, self.reported, iteration
        self.sink(Step(stage.index, iteration, stage.iterations, values, seconds, peak_memory_bytes(image.device),
                       iteration - previous))
        every = self.every
        if every and self.checkpointing is not None and (
                previous // every < iteration // every or iteration == stage.iterations):
            self.sink(snapshot(stage, iteration, image, self.checkpointing.snapshot_size))
        if self.previews.due(force=iteration == stage.iterations):
            self.sink(preview(stage, iteration, image))


def stage_objective(run: Run, plan: StagePlan,
                    inputs: StageInputs) -> Objective | TiledObjective | BandObjective:
    """The stage's targets and objective, cut as ``plan`` says: untiled, tiled, or shared by the ranks.

    Targets once per stage on every rank, whole; a rank's band objective crops what it reads.
    """
    placement, weights = run.placement, run.plan.weights[plan.stage.index]
    targets: Targets = make_targets(placement.extractor, inputs.content, inputs.styles,
                                    run.config.loss.style_blend, weights, placement.precision, plan.grid,
                                    inputs.regions)
    if plan.bands is not None:
        stage = plan.stage
        return BandObjective(placement.world, placement.extractor, targets, weights, plan.bands, stage.width,
                             stage.height, placement.precision)
    return make_objective(placement.extractor, targets, weights, plan.tiles, placement.precision)


def run_stage(run: Run, plan: StagePlan, inputs: StageInputs, start: Tensor,
              warm_state: dict[str, Tensor] | None = None, done: int = 0) -> StageResult:
    """Optimise one stage as ``plan`` cuts it; ``done`` of its iterations already ran (``start`` is
    the image they left)."""
    stage, config = plan.stage, run.config
    objective = stage_objective(run, plan, inputs)
    run.sink(StageStarted(stage.index, len(run.plan.stages), stage.width, stage.height, stage.iterations, done))
    began = time.perf_counter()
    reset_peak_memory(start.device)
    reporter = StepReporter(run, stage, done)
    reporter.started(shown(start, warm_state))
    saves = ProgressSaves(run.checkpointing, stage, done, run.sink) if run.checkpointing is not None else None
    try:  # Ctrl-C stops after the iteration in progress (rank 0 only: the others wait for it in collectives)
        result, state = optimize_with_state(start, objective, optimizer=config.optim.optimizer, lr=config.lr,
                                            iterations=stage.iterations, on_step=reporter,
                                            warm_state=warm_state, sync_every=run.placement.sync_every, done=done,
                                            on_state=saves, average=config.optim.average_iterates,
                                            stop=Convergence(config.optim.tolerance, config.optim.patience),
                                            stop_on_signal=saves is not None)
    except Stopped as stopped:
        if saves is not None:
            saves.stopped(stopped)  # the iterations it finished are kept: a resume loses none
        raise
    final = {k: float(v) for k, v in objective.loss(result).items()}
    if reporter.reported < stage.iterations:
        run.sink(Message(f"stage {stage.index + 1} converged after {reporter.reported} of {stage.iterations} "
                         f"iterations (its loss fell by less than {config.optim.tolerance:g} over "
                         f"{config.optim.patience})"))
    run.sink(StageFinished(stage.index, stage.width, stage.height, time.perf_counter() - began, final,
                           reporter.reported))
    return StageResult(result, final, state)


def run_stage_fitting_memory(run: Run, index: int, inputs: StageInputs, start: Tensor,
                             warm_state: dict[str, Tensor] | None, done: int = 0) -> StageResult:
    """``run_stage``; after an out-of-memory error, the stage starts again with half the tile size.

    A stage the ranks share is not retried: the others wait in a collective and cannot learn to
    start over. It stops with advice instead (``--resume`` continues).
    """
    plan = _shared(run, run.plan.at_start(index))
    while True:
        try:
            return run_stage(run, plan, inputs, start, warm_state, done)
        except Exception as exc:
            if not classify(exc).out_of_memory:
                raise
            if plan.bands is not None:
                stage, tile = plan.stage, plan.bands.tile
                raise DeviceError(f"out of memory on {start.device} at stage {index + 1} ({stage.width}x{stage.height}"
                                  f", {f'{tile} px tiles' if tile else 'one window'} in its band); run again with "
                                  "--resume and a smaller --tile-size") from exc
        smaller = run.plan.smaller(plan)
        was = f"{plan.tiling.tile} px tiles" if plan.tiling.tile else "untiled"
        run.sink(Message(f"out of memory at stage {index + 1} ({was}); "
                         f"retrying it with {smaller.tiling.tile} px tiles"))
        _free_cached_memory(run.placement)
        plan = smaller


def _shared(run: Run, plan: StagePlan) -> StagePlan:
    """``plan`` with the ranks' bands when sharing the stage pays (a collective: every rank asks)."""
    if run.spreader is None:
        return plan
    shared, gain = run.spreader.share(plan)
    if shared.bands is not None:
        stage = plan.stage
        run.sink(Message(f"stage {stage.index + 1}: {len(shared.bands.bands)} bands over "
                         f"{run.placement.world.size} ranks (modelled {gain:.2f}x faster than one)"))
    return shared


def _free_cached_memory(placement: Placement) -> None:
    for device in placement.devices:
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.empty_cache()


@dataclass
class Progress:
    """Where the pyramid stands between stages: the last image, Adam's state, the losses so far."""

    image: Tensor | None = None
    state: dict[str, Tensor] = field(default_factory=dict)
    losses: list[dict[str, float]] = field(default_factory=list)


def _finished_stages(run: Run, done: int) -> Progress:
    """The first ``done`` stages, as the work dir holds them."""
    if not done or run.checkpointing is None:  # ranks other than 0 start from rank 0's image (same_start)
        return Progress()
    workdir = run.checkpointing.workdir
    image, state = workdir.load_stage(done - 1)
    run.sink(Message(f"resuming: {done} of {len(run.plan.stages)} stages already done in {workdir.path}"))
    return Progress(image.to(run.placement.main), state, [workdir.stage_losses(i) for i in range(done)])


def _upscale_notice(run: Run, content: np.ndarray) -> None:
    height, width = content.shape[:2]
    last = run.plan.stages[-1].stage
    if last.long_side > max(width, height):
        run.sink(Message(f"the content image ({width}x{height}) is upscaled to the output size "
                         f"{last.width}x{last.height}: fine detail comes from the style alone"))


def _next_stage(run: Run, stage: Stage, progress: Progress, inputs: StageInputs, init: str | np.ndarray,
                went: int) -> StageResult:
    """Start ``stage`` from the previous result (or the init image, or its saved progress) and run it."""
    config, checkpointing = run.config, run.checkpointing
    start = (initial_image(init, inputs, config.optim.seed) if progress.image is None
             else upsample(progress.image, stage))
    warm = (resize_adam_state(progress.state, stage.height, stage.width)
            if progress.state and config.optim.warm_start else None)
    if went >= 0:  # the first stage this run renders: maybe from its saved progress
        start, warm = saved_progress(checkpointing, stage, went, start, warm, run.sink)
        if checkpointing is not None and checkpointing.snapshot_every:
            run.sink(snapshot(stage, went, shown(start, warm), checkpointing.snapshot_size))  # the first frame
    if run.placement.world.distributed:
        start, warm = same_start(run.placement.world, start, warm)
    return run_stage_fitting_memory(run, stage.index, inputs, start, warm, max(went, 0))


def run_pyramid(run: Run, content: np.ndarray, styles: Sequence[np.ndarray], init: str | np.ndarray,
                done: int = 0, went: int = 0, regions: Regions | None = None) -> tuple[Tensor, list[dict[str, float]]]:
    """Run the plan's stages after the first ``done`` (taken from the work dir), the first of them
    from its progress saved after ``went`` iterations (``WorkDir.progress``), if any; ``regions``
    (at the content's size) say where each style goes.

    Returns the final image (1, 3, H, W) in [0, 1] and every stage's final losses.
    """
    _upscale_notice(run, content)
    progress = _finished_stages(run, done)
    schedule = run.plan.schedule
    for stage in schedule[done:]:
        if run.checkpointing is not None:
            run.checkpointing.workdir.set_status("running", stage=stage.index, stages=len(schedule))
        inputs = stage_inputs(content, styles, stage, run.config, run.placement.main, regions)
        result = _next_stage(run, stage, progress, inputs, init, went if stage.index == done else -1)
        progress = Progress(result.image, result.optimizer_state, [*progress.losses, result.losses])
        if run.checkpointing is not None:
            run.checkpointing.workdir.save_stage(stage, schedule, result.image, result.optimizer_state, result.losses)
            run.checkpointing.workdir.drop_progress(stage.index)
    assert progress.image is not None
    return progress.image, progress.losses
