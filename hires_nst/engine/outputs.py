"""What a finished render writes: the image with its settings inside, the settings and the trace
beside it, the animation and the stage contact sheet; and the record those settings hold."""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import hires_nst
from hires_nst.config.renderjob import RenderJob
from hires_nst.config.schedule import Stage
from hires_nst.config.settings import OUTPUT_FORMATS, RenderConfig
from hires_nst.engine.plan import Crop
from hires_nst.io import images
from hires_nst.io.animation import AnimationRecorder
from hires_nst.io.checkpoints import WorkDir
from hires_nst.io.contact_sheet import contact_sheet
from hires_nst.io.trace import trace_path
from hires_nst.model.backbones import FeatureExtractor
from hires_nst.runtime.placement import Placement


def settings_path(output: Path) -> Path:
    """The resolved settings live beside the image: ``out.png`` -> ``out.png.json``."""
    return output.with_name(output.name + ".json")


def output_path(output: Path, fmt: str = "") -> Path:
    """An output named without an extension takes ``--format``'s (PNG if none); its own one wins."""
    if output.suffix:
        return output
    return output.with_name(output.name + OUTPUT_FORMATS.get(fmt.lower(), ".png"))


def stage_sheet_path(output: Path) -> Path:
    """``--save-stages``: ``out.png`` -> ``out-stages.png``."""
    return output.with_name(f"{output.stem}-stages.png")


def animation_path(config: RenderConfig) -> Path | None:
    return Path(config.output.animate).expanduser() if config.output.animate else None


def written_files(output: Path, config: RenderConfig) -> dict[Path, str]:
    """Every file a render writes outside its work dir, with what it is: the image, its settings and
    trace, and if asked the stage sheet and the animation (its ``WritePlan``, and what the writers write)."""
    files = {output: "output", settings_path(output): "settings", trace_path(output): "trace"}
    if config.output.save_stages:
        files[stage_sheet_path(output)] = "stage sheet"
    animation = animation_path(config)
    if animation is not None:
        files[animation] = "animation"
    return files


def sweep_temp_files(files: Iterable[Path]) -> None:
    """Remove what a killed render left of these files' atomic writes (``.NAME.XXXX.part``)."""
    for path in files:
        for temp in images.temp_files(path.parent, path.name):
            temp.unlink(missing_ok=True)


def write_outputs(output: Path, result: np.ndarray, record: dict[str, Any], config: RenderConfig,
                   workdir: WorkDir, schedule: list[Stage], animation: AnimationRecorder | None) -> Path:
    """The image (with DPI, sRGB profile and the settings inside), then its settings, trace,
    animation and stage sheet beside it."""
    images.save_image(output, result, {images.SETTINGS_KEY: json.dumps(record)}, dpi=config.print.dpi,
                      bit_depth=config.output.bit_depth)
    settings = settings_path(output)
    images.write_atomically(settings, lambda f: f.write(json.dumps(record, indent=2).encode()))
    trace = (workdir.path / "trace.csv").read_bytes()
    images.write_atomically(trace_path(output), lambda f: f.write(trace))
    if animation is not None:
        animation.write()
    if config.output.save_stages:
        sheet = contact_sheet([workdir.stage_image(s.index) for s in schedule],
                              [f"{s.width}x{s.height}" for s in schedule])
        images.save_image(stage_sheet_path(output), sheet)
    workdir.set_status("finished", output=str(output))
    workdir.finish()
    sweep_temp_files(written_files(output, config))
    if not config.output.keep_checkpoints:
        workdir.drop_checkpoints()
    return settings


def settings_record(job: RenderJob, extractor: FeatureExtractor, placement: Placement, schedule: list[Stage],
                    stage_losses: list[dict[str, float]], seconds: float, work_dir: Path, crop: Crop | None) -> dict:
    stages = [{"stage": s.index, "width": s.width, "height": s.height, "iterations": s.iterations,
               "losses": losses} for s, losses in zip(schedule, stage_losses, strict=True)]
    output = output_path(job.output, job.config.output.format)  # the file written: "small" -> small.tif
    return {
        "content": str(job.content), "styles": [str(s) for s in job.styles], "output": str(output),
        "config": job.config.to_dict(), "lr_used": job.config.lr, "weights": extractor.source,
        "preprocessing": extractor.preprocessing, "device": str(placement.main),
        "devices": (list(placement.world.devices) if placement.world.distributed
                    else [str(d) for d in placement.devices]),
        "precision": placement.precision.describe(), "stages": stages,
        "work_dir": str(work_dir), "seconds": round(seconds, 3), "dpi": job.config.print.dpi,
        "crop": list(crop) if crop else None,
        "trace": str(trace_path(output)), "animation": job.config.output.animate or None,
        "versions": {"hires_nst": hires_nst.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
