"""The engine's front door: one render job from files to files."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import hires_nst
from hires_nst import images
from hires_nst.config import RenderConfig
from hires_nst.errors import ConfigError
from hires_nst.events import Planned, PlannedStage, Sink, null_sink
from hires_nst.features import VGGFeatures
from hires_nst.placement import estimate_stage_bytes, resolve_device
from hires_nst.pyramid import run_pyramid
from hires_nst.schedule import Stage, make_schedule
from hires_nst.weights import load_weights


@dataclass(frozen=True)
class RenderJob:
    content: Path
    styles: tuple[Path, ...]
    output: Path
    config: RenderConfig = field(default_factory=RenderConfig)


@dataclass(frozen=True)
class RenderResult:
    output: Path
    settings: Path
    width: int
    height: int
    seconds: float
    losses: dict[str, float]  # final losses at the output size


def settings_path(output: Path) -> Path:
    """The resolved settings live beside the image: ``out.png`` -> ``out.png.json``."""
    return output.with_name(output.name + ".json")


def build_extractor(config: RenderConfig, device: torch.device) -> VGGFeatures:
    model, loss = config.model, config.loss
    weights = load_weights(model.weights, model.preprocessing)
    layers = list(loss.content_layers) + list(loss.style_layers)
    return VGGFeatures(weights, layers, model.pooling).to(device)


def load_inputs(job: RenderJob) -> tuple[np.ndarray, list[np.ndarray], str | np.ndarray]:
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
    return content, styles, init


def render(job: RenderJob, sink: Sink = null_sink) -> RenderResult:
    """Render ``job``: load, optimise over the pyramid, write the image and its settings."""
    began = time.perf_counter()
    output = images.check_output_path(job.output)
    content, styles, init = load_inputs(job)
    config = job.config
    device = resolve_device(config.device.device)
    torch.manual_seed(config.optim.seed)
    extractor = build_extractor(config, device)
    pyramid = config.pyramid
    schedule = make_schedule(content.shape[1], content.shape[0], max_size=pyramid.max_size,
                             min_size=pyramid.min_size, factor=pyramid.scale_factor,
                             iterations=pyramid.iterations)
    sink(Planned(tuple(PlannedStage(s.width, s.height, s.iterations, estimate_stage_bytes(s.width, s.height))
                       for s in schedule), str(device), extractor.source))
    stage_log: list[dict] = []
    image = run_pyramid(extractor, content, styles, schedule, config, init, device, sink,
                        on_stage_done=lambda s, _img, losses: stage_log.append(_stage_record(s, losses)))
    seconds = time.perf_counter() - began
    settings = settings_path(output)
    record = _settings_record(job, extractor, device, stage_log, seconds)
    images.save_image(output, images.to_array(image), {"hires-nst": json.dumps(record["config"])})
    images.write_atomically(settings, lambda f: f.write(json.dumps(record, indent=2).encode()))
    return RenderResult(output, settings, schedule[-1].width, schedule[-1].height, seconds,
                        stage_log[-1]["losses"])


def _stage_record(stage: Stage, losses: dict[str, float]) -> dict:
    return {"stage": stage.index, "width": stage.width, "height": stage.height,
            "iterations": stage.iterations, "losses": losses}


def _settings_record(job: RenderJob, extractor: VGGFeatures, device: torch.device,
                     stages: list[dict], seconds: float) -> dict:
    return {
        "content": str(job.content), "styles": [str(s) for s in job.styles], "output": str(job.output),
        "config": job.config.to_dict(), "lr_used": job.config.lr,
        "weights": extractor.source,
        "preprocessing": extractor.preprocessing, "device": str(device), "stages": stages,
        "seconds": round(seconds, 3),
        "versions": {"hires_nst": hires_nst.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
