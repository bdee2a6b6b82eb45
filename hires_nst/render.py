"""The engine's front door: one render job from files to files, resumable stage by stage."""

from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hires_nst
from hires_nst import color, images
from hires_nst.checkpoints import WorkDir, file_digest
from hires_nst.config import RenderConfig
from hires_nst.contact_sheet import contact_sheet
from hires_nst.errors import ConfigError, Interrupted
from hires_nst.events import Planned, PlannedStage, Sink, null_sink
from hires_nst.features import VGGFeatures
from hires_nst.placement import (Placement, default_sync_every, estimate_stage_bytes, place, resolve_devices,
                                  resolve_precision)
from hires_nst.pyramid import Checkpointing, run_pyramid, stage_tiling
from hires_nst.schedule import Stage, make_schedule
from hires_nst.weights import load_weights

DEFAULT_WORK_ROOT = Path("outputs") / "work"


@dataclass(frozen=True)
class RenderJob:
    content: Path
    styles: tuple[Path, ...]
    output: Path
    config: RenderConfig = field(default_factory=RenderConfig)
    resume: bool = False  # reuse the finished stages in the work dir
    restart: bool = False  # discard whatever the work dir holds


@dataclass(frozen=True)
class RenderResult:
    output: Path
    settings: Path
    width: int
    height: int
    seconds: float
    losses: dict[str, float]  # final losses at the output size
    work_dir: Path
    stages_reused: int = 0


@dataclass(frozen=True)
class Inputs:
    content: np.ndarray  # (H, W, 3) as loaded
    styles: list[np.ndarray]
    init: str | np.ndarray


def settings_path(output: Path) -> Path:
    """The resolved settings live beside the image: ``out.png`` -> ``out.png.json``."""
    return output.with_name(output.name + ".json")


def work_dir_of(job: RenderJob) -> Path:
    """``--work-dir``, or ``outputs/work/<name>-<hash of the output's absolute path>``: two outputs
    of the same name in different folders never share checkpoints."""
    if job.config.output.work_dir:
        return Path(job.config.output.work_dir).expanduser()
    tag = hashlib.sha1(str(job.output.expanduser().resolve()).encode()).hexdigest()[:8]
    return DEFAULT_WORK_ROOT / f"{job.output.stem}-{tag}"


def build_extractor(config: RenderConfig, device: torch.device) -> VGGFeatures:
    model, loss = config.model, config.loss
    weights = load_weights(model.weights, model.preprocessing)
    layers = list(loss.content_layers) + list(loss.style_layers)
    return VGGFeatures(weights, layers, model.pooling).to(device)


def load_inputs(job: RenderJob) -> Inputs:
    """Read content, styles and the init image (if a file), failing before any work starts."""
    if not job.styles:
        raise ConfigError("at least one style image is needed")
    blend = job.config.loss.style_blend
    if blend and len(blend) != len(job.styles):
        raise ConfigError(f"--style-blend has {len(blend)} weights for {len(job.styles)} style images")
    content = images.load_image(job.content, "content image")
    styles = [images.load_image(p, f"style image {i + 1}") for i, p in enumerate(job.styles)]
    init = job.config.optim.init
    if init not in ("content", "noise"):
        init = images.load_image(init, "--init image")
    return Inputs(content, styles, init)


def working_images(inputs: Inputs, mode: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Content and styles as the optimisation sees them under the colour mode."""
    if mode == "luminance":
        content_luma = color.luminance(inputs.content)
        styles = [color.grey(color.match_luminance(color.luminance(s), content_luma)) for s in inputs.styles]
        return color.grey(content_luma), styles
    if mode == "match":
        return inputs.content, [color.match_colors(s, inputs.content) for s in inputs.styles]
    return inputs.content, inputs.styles


def fingerprint(job: RenderJob) -> dict[str, Any]:
    """What a finished stage depends on: the inputs' bytes and every setting that shapes pixels.

    Sizes and iteration counts are matched stage by stage instead, so that a larger --max-size
    can reuse the stages of a smaller render; device and output options do not change pixels (precision only within rounding).
    """
    settings = job.config.to_dict()
    settings.pop("device")
    settings.pop("output")
    pyramid = settings.pop("pyramid")
    settings["style"] = {"style_scale": pyramid["style_scale"], "style_upscale": pyramid["style_upscale"]}
    files = [job.content, *job.styles]
    if job.config.optim.init not in ("content", "noise"):
        files.append(Path(job.config.optim.init))
    # Through JSON once, so that it compares equal to the copy read back from settings.json.
    return json.loads(json.dumps({"inputs": [file_digest(p) for p in files], "settings": settings}))


def render(job: RenderJob, sink: Sink = null_sink) -> RenderResult:
    """Render ``job``: load, optimise over the pyramid, write the image and its settings."""
    began = time.perf_counter()
    output = images.check_output_path(job.output)
    inputs = load_inputs(job)
    config = job.config
    placement = make_placement(config)
    device = placement.main
    torch.manual_seed(config.optim.seed)
    extractor = placement.extractor
    pyramid = config.pyramid
    height, width = inputs.content.shape[:2]
    schedule = make_schedule(width, height, max_size=pyramid.max_size, min_size=pyramid.min_size,
                             factor=pyramid.scale_factor, iterations=pyramid.iterations)
    workdir = WorkDir(work_dir_of(job))
    done = workdir.open(fingerprint(job), schedule, resume=job.resume, restart=job.restart)
    sink(Planned(tuple(_planned(config, s, placement) for s in schedule), placement.describe(), extractor.source))
    content, styles = working_images(inputs, config.loss.preserve_color)
    try:
        image, stage_losses = run_pyramid(extractor, content, styles, schedule, config, inputs.init, device, sink,
                                          Checkpointing(workdir, config.output.save_every), done, placement)
    except KeyboardInterrupt:
        raise _interrupted(workdir, job) from None
    except BaseException as exc:
        workdir.set_status("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    result = images.to_array(image)
    if config.loss.preserve_color == "luminance":
        result = color.with_chroma_of(result, images.resize(inputs.content, result.shape[1], result.shape[0]))
    seconds = time.perf_counter() - began
    record = _settings_record(job, extractor, placement, schedule, stage_losses, seconds, workdir.path)
    images.save_image(output, result, {"hires-nst": json.dumps(record["config"])})
    settings = settings_path(output)
    images.write_atomically(settings, lambda f: f.write(json.dumps(record, indent=2).encode()))
    if config.output.save_stages:
        sheet = contact_sheet([workdir.stage_image(s.index) for s in schedule], [f"{s.width}x{s.height}" for s in schedule])
        images.save_image(output.with_name(f"{output.stem}-stages.png"), sheet)
    workdir.set_status("finished", output=str(output))
    return RenderResult(output, settings, schedule[-1].width, schedule[-1].height, seconds, stage_losses[-1],
                        workdir.path, done)


def make_placement(config: RenderConfig) -> Placement:
    """Devices, precision and one extractor replica per device: decided once per render."""
    devices = resolve_devices(config.device.devices, config.device.device)
    precision = resolve_precision(config.device.precision, devices)
    extractor = build_extractor(config, devices[0])
    return place(extractor, devices, precision, default_sync_every(devices, config.device.sync_every))


def _planned(config: RenderConfig, stage: Stage, placement: Placement) -> PlannedStage:
    tiling = stage_tiling(config, stage, placement.main, placement=placement)
    memory = estimate_stage_bytes(stage.width, stage.height, tiling.tile, tiling.halo,
                                  placement.precision.bytes_per_value(placement.main))
    return PlannedStage(stage.width, stage.height, stage.iterations, memory, tiling.tile, tiling.tiles)


def _interrupted(workdir: WorkDir, job: RenderJob) -> Interrupted:
    status = workdir.status() or {}
    stage = status.get("stage")
    workdir.set_status("interrupted", stage=stage, stages=status.get("stages"))
    where = f" during stage {stage + 1}/{status.get('stages')}" if stage is not None else ""
    kept = f"{stage} finished stage(s) kept" if stage is not None else "nothing finished yet"
    return Interrupted(f"interrupted{where}; {kept} in {workdir.path}; "
                       "run the same command with --resume to continue")


def _settings_record(job: RenderJob, extractor: VGGFeatures, placement: Placement, schedule: list[Stage],
                     stage_losses: list[dict[str, float]], seconds: float, work_dir: Path) -> dict:
    stages = [{"stage": s.index, "width": s.width, "height": s.height, "iterations": s.iterations,
               "losses": losses} for s, losses in zip(schedule, stage_losses)]
    return {
        "content": str(job.content), "styles": [str(s) for s in job.styles], "output": str(job.output),
        "config": job.config.to_dict(), "lr_used": job.config.lr, "weights": extractor.source,
        "preprocessing": extractor.preprocessing, "device": str(placement.main),
        "devices": [str(d) for d in placement.devices], "precision": placement.precision.describe(), "stages": stages,
        "work_dir": str(work_dir), "seconds": round(seconds, 3),
        "versions": {"hires_nst": hires_nst.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
