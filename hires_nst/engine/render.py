"""The engine's front door: one render job from files to files, resumable stage by stage.

Over 300 lines on purpose: the front door's steps (inputs, plan, work dir, ranks, outputs), each a short function.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hires_nst.config.catalog import alias
from hires_nst.config.renderjob import RenderJob, RenderResult
from hires_nst.config.schedule import Stage
from hires_nst.config.settings import RenderConfig
from hires_nst.core import color, matting
from hires_nst.engine.bandplan import Spreader
from hires_nst.engine.optimize import Stopped, shown
from hires_nst.engine.outputs import (
    animation_path,
    output_path,
    settings_record,
    sweep_temp_files,
    write_outputs,
    written_files,
)
from hires_nst.engine.plan import RenderPlan, StagePlan, make_plan, plan_schedule, raised_first_stage
from hires_nst.engine.pyramid import Run, run_pyramid
from hires_nst.engine.regions import Regions, load_regions
from hires_nst.engine.resume import (
    checkpointing_of,
    drop_partial,
    find_work_dir,
    fingerprint,
    interrupted,
    partial_path,
    render_plan,
    resume_advice,
    resume_point,
    reuse_note,
    work_dir_of,
    write_partial,
)
from hires_nst.errors import ConfigError, DiskFullError, OutputError
from hires_nst.events import Message, Planned, PlannedStage, Sink, null_sink, tee
from hires_nst.io import images
from hires_nst.io.animation import AnimationRecorder
from hires_nst.io.checkpoints import WorkDir
from hires_nst.io.preview import PREVIEW_NAME, PreviewFile
from hires_nst.io.safety import check_free_space, deferred_interrupts, render_needs, retrying_when_full
from hires_nst.io.trace import TraceWriter
from hires_nst.io.writeplan import check_writes
from hires_nst.model.backbones import build_extractor as make_extractor
from hires_nst.model.cache import extractor_key, extractors
from hires_nst.model.features import FrozenExtractor
from hires_nst.model.weights import load_weights
from hires_nst.runtime import ranks
from hires_nst.runtime.placement import Placement, default_sync_every, place, resolve_devices, resolve_precision


@dataclass(frozen=True)
class Inputs:
    content: np.ndarray  # (H, W, 3) as loaded (centre-cropped for a print size with --fit crop)
    styles: list[np.ndarray]
    init: str | np.ndarray
    regions: Regions | None = None  # --mask / --region, at the content's size


def disk_needs(job: RenderJob, width: int, height: int) -> dict[Path, int]:
    """Bytes the job will write by folder (output, work dir), for a content of this size."""
    config = job.config
    schedule, _ = plan_schedule(config, width, height)
    return render_needs(output_path(job.output, config.output.format), work_dir_of(job), schedule,
                        config.optim.optimizer, config.output.bit_depth, config.output.save_stages)


def build_extractor(config: RenderConfig, device: torch.device) -> FrozenExtractor:
    """The network of ``config`` on ``device``: built once per process and kept warm (``model.cache``)."""
    model, loss = config.model, config.loss
    layers = list(loss.content_layers) + list(loss.style_layers)

    def build() -> FrozenExtractor:
        weights = load_weights(model.weights, model.preprocessing, model.backbone)
        return make_extractor(model.backbone, weights, layers, model.pooling).to(device)

    key = extractor_key(model.backbone, model.weights, model.preprocessing, model.pooling, layers, device)
    return extractors.get(key, build)


def load_inputs(job: RenderJob) -> Inputs:
    """Read content, styles and the init image (if a file), failing before any work starts."""
    if not job.styles:
        raise ConfigError("at least one style image is needed")
    blend = job.config.loss.style_blend
    if blend and len(blend) != len(job.styles):
        count = f"{len(job.styles)} style image{'s' if len(job.styles) != 1 else ''}"
        raise ConfigError(f"--style-blend has {len(blend)} weights for {count}")
    limit = job.config.input.max_input_pixels
    content = images.load_image(job.content, "content image", limit)
    styles = [images.load_image(p, f"style image {i + 1}", limit) for i, p in enumerate(job.styles)]
    setting = job.config.optim.init
    init: str | np.ndarray = (setting if setting in ("content", "noise")
                              else images.load_image(setting, "--init image", limit))
    regions = load_regions(job.config.loss, job.styles, content.shape[1], content.shape[0], limit)
    return Inputs(content, styles, init, regions)


def working_images(inputs: Inputs, mode: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Content and styles as the optimisation sees them under the colour mode."""
    if mode == "luminance":
        content_luma = color.luminance(inputs.content)
        styles = [color.grey(color.match_luminance(color.luminance(s), content_luma)) for s in inputs.styles]
        return color.grey(content_luma), styles
    if mode == "match":
        return inputs.content, [color.match_colors(s, inputs.content) for s in inputs.styles]
    return inputs.content, inputs.styles


def render(job: RenderJob, sink: Sink = null_sink) -> RenderResult:
    """Render ``job``: load, plan, optimise over the pyramid, write the image, its settings and its trace.

    The work dir is locked for the render (worklock.py). However the render ends, status.json does
    not stay "running"; a disk that stays full stops it with what was kept and how to resume.

    On several devices (``--devices``) one rank per device renders it together with the others
    (``ranks.launch``: rank 0 here, the others spawned); under torchrun this process is one rank.
    Only rank 0 has a work dir (and its lock), reads and writes files and reports.
    """
    if job.resume and job.restart:  # before any loading; WorkDir.open refuses the pair too
        raise ConfigError("--resume and --restart contradict each other (--restart discards what --resume "
                          "would continue); give one of them")
    setting = job.config.device
    if ranks.torchrun_env() is not None:
        world = ranks.join_from_env(setting.device, setting.devices)
        try:
            return render_rank(world, job, sink if world.main else null_sink)
        finally:
            ranks.leave()
    devices = resolve_devices(setting.devices, setting.device)
    if len(devices) > 1:
        return ranks.launch(render_rank, devices, (job, sink), (job, null_sink))
    return render_rank(ranks.single(devices[0]), job, sink)


def render_rank(world: ranks.World, job: RenderJob, sink: Sink = null_sink) -> RenderResult:
    """``render`` as one rank of ``world``: rank 0 finds and locks the work dir, checks, reads and
    writes it and the output and reports (status.json never left "running"); the others only
    compute, silently, without a work dir (``_render_silently``)."""
    if not world.main:
        return _render_rank(world, job, None, null_sink)
    workdir = find_work_dir(job, sink)
    try:
        return _render_rank(world, job, workdir, sink)
    except DiskFullError as exc:
        if not workdir.lock.held:
            raise
        workdir.set_status("failed", error=str(exc), resume=job.resume_command)
        raise DiskFullError(f"{exc}; {workdir.kept_text()} in {workdir.path}; free some disk space, then "
                            f"{resume_advice(job)}") from None
    except BaseException as exc:
        if workdir.lock.held and (workdir.status() or {}).get("state") == "running":
            workdir.set_status("failed", error=f"{type(exc).__name__}: {exc}", resume=job.resume_command)
        raise
    finally:
        workdir.close()


def _render_rank(world: ranks.World, job: RenderJob, workdir: WorkDir | None, sink: Sink) -> RenderResult:
    """One rank's render; ``workdir`` is rank 0's (None on the others, which write nothing)."""
    began = time.perf_counter()
    config = job.config
    output = output_path(job.output, config.output.format)
    if workdir is not None:
        output = images.check_output_path(output)
        check_writes(render_plan(job, output, workdir.path))
    inputs = load_inputs(job)
    schedule, crop = plan_schedule(config, inputs.content.shape[1], inputs.content.shape[0])
    if crop is not None:
        inputs = dataclasses.replace(inputs, content=inputs.content[crop[1]:crop[3], crop[0]:crop[2]],
                                     regions=inputs.regions.cropped(crop) if inputs.regions else None)
    if workdir is not None:
        _check_before_work(config, output, workdir, schedule)
    placement = make_placement(config, world)
    plan = make_plan(config, schedule, crop, placement)
    torch.manual_seed(config.optim.seed)
    stamp = fingerprint(job, crop)
    point = resume_point(job, workdir, stamp, schedule) if workdir is not None else None
    point = ranks.broadcast_object(world, point, "sharing the resume point")
    assert point is not None  # rank 0 always has a work dir: the others receive its point
    done, went = point
    spreader = make_spreader(config, plan, placement)
    if workdir is None:
        return _render_silently(job, inputs, plan, placement, spreader, done, went, began)
    sweep_temp_files([*written_files(output, config), partial_path(output)])
    trace = TraceWriter(workdir.path / "trace.csv", keep_stages=done, keep_iterations=went, report=sink)
    try:  # until _run owns it: a sink that fails at the first event must not leave the trace open
        animation = _animation(config, schedule[-1], inputs)
        # the trace first: a row is on disk before a sink that stops the render (Ctrl-C in a display) sees it
        sink = tee(trace, sink, PreviewFile(workdir.path / PREVIEW_NAME, sink), *([animation] if animation else []))
        _announce(plan, placement, workdir, output, config, sink)
        if job.resume and not done and not went:
            sink(Message(f"--resume: nothing saved yet in {workdir.path}; stage 1 starts from its beginning"))
        note = reuse_note(job, output, workdir, done)
        if note:
            sink(Message(note))
    except BaseException:
        trace.close()
        raise
    checkpointing = checkpointing_of(config, workdir, schedule, animation is not None)
    run = Run(config, plan, placement, sink, checkpointing, spreader)
    image, stage_losses = _run(run, job, inputs, workdir, trace, done, went, output)
    result = _final_image(image, inputs, config)
    seconds = workdir.seconds()  # with the earlier runs' time, for a resumed render
    record = settings_record(job, placement.extractor, placement, schedule, stage_losses, seconds, workdir.path, crop)

    def write() -> Path:
        with deferred_interrupts():  # a Ctrl-C now waits for the image and its settings to be complete
            settings = write_outputs(output, result, record, config, workdir, schedule, animation)
            drop_partial(partial_path(output))  # the image so far of an earlier Ctrl-C, now replaced
            return settings

    settings = retrying_when_full(write, f"the output {output}", workdir.say)
    return RenderResult(output, settings, schedule[-1].width, schedule[-1].height, seconds, stage_losses[-1],
                        workdir.path, done)


def _render_silently(job: RenderJob, inputs: Inputs, plan: RenderPlan, placement: Placement,
                     spreader: Spreader | None, done: int, went: int, began: float) -> RenderResult:
    """A rank other than 0: the same pyramid without a work dir, events or files. It starts each
    stage from rank 0's image (``distributed.same_start``), so it needs none of rank 0's files."""
    config = job.config
    content, styles = working_images(inputs, config.loss.preserve_color)
    run = Run(config, plan, placement, null_sink, None, spreader)
    _, stage_losses = run_pyramid(run, content, styles, inputs.init, done, went, inputs.regions)
    last = plan.stages[-1].stage
    return RenderResult(output_path(job.output, config.output.format), Path(), last.width, last.height,
                        time.perf_counter() - began, stage_losses[-1], work_dir_of(job), done)


def make_spreader(config: RenderConfig, plan: RenderPlan, placement: Placement) -> Spreader | None:
    """The sharing decisions of a render on several ranks (None on one)."""
    if not placement.world.distributed:
        return None
    return Spreader(placement.world, placement, plan.rules, [alias(n) for n in config.loss.style_layers])


def _check_before_work(config: RenderConfig, output: Path, workdir: WorkDir, schedule: list[Stage]) -> None:
    """Fail before the work, not after it: the animation's folder, and room for every file."""
    _check_animation_path(config)
    check_free_space(render_needs(output, workdir.path, schedule, config.optim.optimizer, config.output.bit_depth,
                                  config.output.save_stages))


def _announce(plan: RenderPlan, placement: Placement, workdir: WorkDir, output: Path, config: RenderConfig,
              sink: Sink) -> None:
    """The plan as the user sees it, and what they should know before the work starts."""
    sink(Planned(tuple(_planned(p) for p in plan.stages), placement.describe(), placement.extractor.source,
                 os.path.abspath(workdir.path), os.path.abspath(workdir.path / PREVIEW_NAME)))
    if raised_first_stage(config, plan.schedule):
        sink(Message(raised_first_stage(config, plan.schedule)))
    for name, why in workdir.damaged.items():
        sink(Message(f"{name} in {workdir.path} is {why}: not reused, its stage runs again"))
    if config.output.bit_depth == 16 and images.FORMATS[output.suffix.lower()] == "JPEG":
        sink(Message("JPEG holds 8 bits per channel: writing 8-bit (use .png or .tif for 16-bit)"))


def _run(run: Run, job: RenderJob, inputs: Inputs, workdir: WorkDir, trace: TraceWriter, done: int,
         went: int, output: Path) -> tuple[torch.Tensor, list[dict[str, float]]]:
    """``run_pyramid`` on the working images; a failure or Ctrl-C is recorded in the work dir, and
    Ctrl-C leaves the image so far beside the output (``_keep_partial``)."""
    content, styles = working_images(inputs, run.config.loss.preserve_color)
    try:
        return run_pyramid(run, content, styles, inputs.init, done, went, inputs.regions)
    except KeyboardInterrupt as exc:
        raise interrupted(workdir, job, _keep_partial(run, inputs, workdir, output, exc)) from None
    except BaseException as exc:
        workdir.set_status("failed", error=f"{type(exc).__name__}: {exc}", resume=job.resume_command)
        raise
    finally:
        trace.close()


def _keep_partial(run: Run, inputs: Inputs, workdir: WorkDir, output: Path, stop: KeyboardInterrupt) -> str:
    """Write the image so far as ``out.partial.png``, at its stage's size, colour treated as the
    output's; say where and what it shows ('' when there is none yet, or it was not written: a
    file of the user's in its place, a full disk, another Ctrl-C: the work dir's save is what counts)."""
    try:
        found = _image_so_far(workdir, run.plan.schedule, stop)
        if found is None:
            return ""
        image, stage, iteration = found
        path, stages = partial_path(output), len(run.plan.schedule)
        about = {"output": str(output), "stage": stage.index + 1, "stages": stages, "iteration": iteration,
                 "iterations": stage.iterations, "work_dir": str(workdir.path)}
        if not write_partial(path, _final_image(image, inputs, run.config), about):
            run.sink(Message(f"{path} is not an image hires-nst wrote: left as it is (the image so far is "
                             f"not written)"))
            return ""
    except (OutputError, KeyboardInterrupt):
        return ""
    done = "finished" if iteration == stage.iterations else f"iteration {iteration}/{stage.iterations}"
    return f"{path} (stage {stage.index + 1}/{stages}, {stage.width}x{stage.height}, {done})"


def _image_so_far(workdir: WorkDir, schedule: list[Stage],
                  stop: KeyboardInterrupt) -> tuple[torch.Tensor, Stage, int] | None:
    """The image a stopped render got to, its stage and iteration: the stage's best point (or
    average) as it stopped; else (stopped between stages, or in the middle of a step) the newest
    one the work dir keeps; None before the first save."""
    if isinstance(stop, Stopped):
        index = (workdir.status() or {}).get("stage")
        if isinstance(index, int) and 0 <= index < len(schedule):
            return stop.shown, schedule[index], stop.iteration
    done, went = workdir.kept()
    if went:
        image, state = workdir.load_progress(done)
        return shown(image, state), schedule[done], went
    if done:
        return workdir.load_stage(done - 1)[0], schedule[done - 1], schedule[done - 1].iterations
    return None


def _final_image(image: torch.Tensor, inputs: Inputs, config: RenderConfig) -> np.ndarray:
    if config.loss.photo_smooth != "off":  # photo mode's last pass, at full size on the device
        photo = images.resize(inputs.content, image.shape[-1], image.shape[-2])
        image = matting.smooth(image, images.to_tensor(photo).to(image.device), config.loss.photo_smooth)
    result = images.to_array(image)
    if config.loss.preserve_color == "luminance":
        result = color.with_chroma_of(result, images.resize(inputs.content, result.shape[1], result.shape[0]))
    return result


def _check_animation_path(config: RenderConfig) -> None:
    """Fail before the work, not after it, when the animation's folder cannot exist."""
    animation = animation_path(config)
    if animation is not None:
        folder = animation.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise OutputError(f"--animate {config.output.animate}: {folder} is not a folder")


def _animation(config: RenderConfig, last: Stage, inputs: Inputs) -> AnimationRecorder | None:
    """The recorder for ``--animate``; frames of a luminance-only render get the photo's chroma back."""
    path = animation_path(config)
    if path is None:
        return None
    transform = None
    if config.loss.preserve_color == "luminance":
        def transform(image: np.ndarray) -> np.ndarray:
            return color.with_chroma_of(image, images.resize(inputs.content, image.shape[1], image.shape[0]))
    return AnimationRecorder(path, last.width, last.height, config.output.animate_size, transform)


def make_placement(config: RenderConfig, world: ranks.World) -> Placement:
    """This process's device (its rank's in ``world``), precision and extractor: decided once per render."""
    devices = (world.device,)
    precision = resolve_precision(config.device.precision, devices)
    extractor = build_extractor(config, devices[0])
    return place(extractor, devices, precision, default_sync_every(devices, config.device.sync_every), world)


def _planned(plan: StagePlan) -> PlannedStage:
    stage, tiling = plan.stage, plan.tiling
    return PlannedStage(stage.width, stage.height, stage.iterations, plan.memory, tiling.tile, tiling.tiles,
                        plan.budget)


