"""Resume, in one room: where a render's work dir is, what a finished stage depends on (the
fingerprint), where a render goes on from, the progress saves that make that possible, and what an
interrupted render tells the user.

The work dir is absolute, beside the output (``out.png.work``) unless --work-dir says otherwise, so
that the same render resumed from another folder finds its checkpoints. Before ``OUT.work`` the
default was ``outputs/work/<name>-<hash>`` under the folder a render was started from; ``--resume``
still goes on from such a dir when the new place holds nothing. The files themselves (checkpoints,
status, locks) are ``io/checkpoints.WorkDir``'s; what a render reads and writes (``input_files``,
``render_plan``) is checked by ``io/writeplan.check_writes``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from hires_nst.config.regionspec import mask_files
from hires_nst.config.renderjob import RenderJob
from hires_nst.config.schedule import Stage
from hires_nst.config.settings import RenderConfig
from hires_nst.engine.optimize import Stopped, shown
from hires_nst.engine.outputs import output_path, written_files
from hires_nst.engine.plan import Crop
from hires_nst.errors import Interrupted, OutputError
from hires_nst.events import Message, Sink, null_sink
from hires_nst.io import images
from hires_nst.io.checkpoints import WorkDir, file_digest
from hires_nst.io.preview import PREVIEW_SECONDS
from hires_nst.io.writeplan import WritePlan

LEGACY_WORK_ROOT = Path("outputs") / "work"  # relative to the current folder: the default before OUT.work


def work_dir_of(job: RenderJob) -> Path:
    """``--work-dir`` (made absolute), or ``OUT.work`` beside the output."""
    if job.config.output.work_dir:
        return Path(os.path.abspath(Path(job.config.output.work_dir).expanduser()))
    output = Path(os.path.abspath(output_path(job.output, job.config.output.format).expanduser()))
    return output.with_name(output.name + ".work")


def legacy_work_dir(job: RenderJob) -> Path:
    """The default work dir of earlier versions: ``outputs/work/<name>-<hash of the output's path>``."""
    tag = hashlib.sha1(str(job.output.expanduser().resolve()).encode()).hexdigest()[:8]
    return Path(os.path.abspath(LEGACY_WORK_ROOT / f"{job.output.stem}-{tag}"))


def find_work_dir(job: RenderJob, sink: Sink) -> WorkDir:
    """The job's work dir, or for a --resume without --work-dir an older default one that holds the
    work (said through ``sink``); the WorkDir tells ``sink`` what the render should know."""
    path = work_dir_of(job)
    if job.resume and not job.config.output.work_dir and not WorkDir(path).has_work():
        legacy = legacy_work_dir(job)
        if WorkDir(legacy).has_work():
            sink(Message(f"resuming from the older work dir {legacy} (new renders keep theirs in {path})"))
            path = legacy
    return WorkDir(path, lambda text: sink(Message(text)))


def input_files(job: RenderJob) -> dict[str, Path]:
    """The files a render reads, by what they are (in the fingerprint's order)."""
    files = {"content image": job.content, **{f"style image {i + 1}": p for i, p in enumerate(job.styles)}}
    if job.config.optim.init not in ("content", "noise"):
        files["--init image"] = Path(job.config.optim.init)
    return {**files, **mask_files(job.config.loss.mask, job.config.loss.region)}


def render_plan(job: RenderJob, output: Path, work_dir: Path, owner: str = "") -> WritePlan:
    """What ``job`` writes (its output and the files beside it, its work dir) and reads, for
    ``writeplan.check_writes``; ``owner`` (`` of job 'x'``) says whose, in a batch's plan."""
    plan = WritePlan()
    for path, what in written_files(output, job.config).items():
        plan.write(path, f"{what}{owner}")
    plan.write(partial_path(output), f"partial image{owner}")  # written only on Ctrl-C
    plan.work_dir(work_dir, f"work dir{owner}")
    for what, path in input_files(job).items():
        plan.read(path, f"{what}{owner}")
    return plan


# Settings that shape pixels but came after the first work dirs, each with the value every render had
# before it existed: a render that has that value leaves the key out of its fingerprint, so a work
# dir started before the key existed can still be resumed. These are the old behaviour, not the
# config's defaults (the style loss, the layer weights and the tolerance have moved on since), and
# must never change: a changed value would refuse --resume of every older work dir.
ADDED_LATER = {("model", "backbone"): "vgg19", ("loss", "style_layer_weights"): "equal", ("loss", "style_loss"): "gram",
               ("optim", "average_iterates"): 0.0, ("loss", "mask"): "", ("loss", "region"): (),
               ("optim", "tolerance"): 0.0, ("optim", "patience"): 50}


def fingerprint(job: RenderJob, crop: Crop | None = None) -> dict[str, Any]:
    """What a finished stage depends on: the inputs' bytes and every setting that shapes pixels.

    Sizes and iteration counts are matched stage by stage instead, so that a larger --max-size
    (or print size) can reuse the stages of a smaller render; of the print settings only the crop
    they make counts; device, output and input-limit options do not change pixels
    (precision only within rounding).
    """
    settings: dict[str, Any] = job.config.to_dict()
    for section in ("device", "output", "print", "input"):
        settings.pop(section)
    if crop is not None:
        settings["crop"] = list(crop)
    for (section, key), default in ADDED_LATER.items():  # so that older work dirs still resume
        if settings[section][key] == default:
            del settings[section][key]
    pyramid = settings.pop("pyramid")
    settings["style"] = {"style_scale": pyramid["style_scale"], "style_upscale": pyramid["style_upscale"]}
    files = list(input_files(job).values())  # content, styles, --init image, masks
    # Through JSON once, so that it compares equal to the copy read back from settings.json.
    return json.loads(json.dumps({"inputs": [file_digest(p) for p in files], "settings": settings}))


def resume_point(job: RenderJob, workdir: WorkDir, stamp: dict[str, Any], schedule: list[Stage]) -> tuple[int, int]:
    """How many stages the work dir already holds for this job, and how far the next one got."""
    done = workdir.open(stamp, schedule, resume=job.resume, restart=job.restart,
                        inputs=[f"{what} ({path})" for what, path in input_files(job).items()])
    return done, workdir.progress(schedule[done], schedule) if done < len(schedule) else 0


def reuse_note(job: RenderJob, output: Path, workdir: WorkDir, done: int) -> str:
    """What a render should say before it starts when its output or a finished render of it is
    already there ('' when neither is): what it reuses, what it replaces, and what --restart does."""
    stages, exists = len(workdir.schedule), os.path.lexists(output)
    replaced = f"; {output} is replaced when it finishes" if exists else ""
    if workdir.reopened is None:  # no finished render in the work dir, or --resume / --restart said what to do
        if job.resume and done == stages:
            return f"--resume: all {stages} stages are finished in {workdir.path}: writing {output} from them"
        return f"{output} exists: this render replaces it when it finishes" if exists else ""
    if done == stages:
        return (f"{output if exists else 'the output'} was rendered before with the same inputs and settings: "
                f"its {stages} finished stages in {workdir.path} are written out again, nothing is rendered; "
                "--restart renders it again from the start")
    if done:
        return (f"reusing {done} of {stages} stages from the finished render in {workdir.path} (same inputs and "
                f"settings); the rest are rendered{replaced}; --restart renders every stage again")
    return (f"the finished render in {workdir.path} is not reused ({workdir.reopened}): this render starts from "
            f"the beginning{replaced}")


def resume_advice(job: RenderJob) -> str:
    if job.resume_command:
        return f"to continue, run: {job.resume_command}"
    return "run the same command with --resume to continue"


def interrupted(workdir: WorkDir, job: RenderJob, partial: str = "") -> Interrupted:
    """What a Ctrl-C leaves, for the user: where it stopped, what the work dir keeps, the image so
    far (``partial``: its path and what it shows, '' if none was written) and how to go on."""
    schedule = workdir.schedule
    stage = (workdir.status() or {}).get("stage")
    kept, _ = workdir.kept()
    workdir.set_status("interrupted", stage=stage, stages=len(schedule), resume=job.resume_command)
    if stage is None:
        where = ""
    elif kept > stage:  # the signal arrived while the stage's checkpoint was written, and waited for it
        where = f" after stage {stage + 1}/{len(schedule)}"
    else:
        where = f" during stage {stage + 1}/{len(schedule)}"
    detail = f"interrupted{where}; {workdir.kept_text()}"
    image = f"; the image so far: {partial}" if partial else ""
    return Interrupted(f"{detail} in {workdir.path}{image}", detail, resume_advice(job))


# --------------------------------------------------------------------------- the image so far


def partial_path(output: Path) -> Path:
    """Where Ctrl-C writes the image so far: ``out.png`` -> ``out.partial.png`` (never the output's
    own name: nobody should take it for the finished print)."""
    return output.with_name(f"{output.stem}.partial.png")


def partial_record(path: Path) -> dict[str, Any] | None:
    """What a partial image of ours says about itself (the record in its PNG text); None for any
    other file, or none."""
    try:
        data = json.loads(images.png_text(path).get(images.SETTINGS_KEY, ""))
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("partial") is True else None


def write_partial(path: Path, image: np.ndarray, about: dict[str, Any]) -> bool:
    """Write the image so far (PNG, with ``about`` and a partial mark inside); False, and nothing
    written, where ``path`` is a file hires-nst did not write as a partial image (a user's)."""
    if os.path.lexists(path) and partial_record(path) is None:
        return False
    images.save_image(path, image, {images.SETTINGS_KEY: json.dumps({"partial": True, **about})})
    return True


def drop_partial(path: Path) -> None:
    """The finished output replaces the image so far: a partial image of ours goes, anything else stays."""
    if partial_record(path) is not None:
        path.unlink(missing_ok=True)


def checkpointing_of(config: RenderConfig, workdir: WorkDir, schedule: list[Stage], animated: bool) -> Checkpointing:
    output = config.output
    return Checkpointing(workdir, output.save_every, output.animate_every if animated else 0, output.animate_size,
                         output.save_minutes, tuple(schedule), PREVIEW_SECONDS)


@dataclass
class Checkpointing:
    """What a render leaves behind while it runs: finished stages in the work dir, the stage in
    progress every ``save_every`` iterations and every ``save_minutes`` (resumable, with a PNG to
    look at), and a ``Snapshot`` event every ``snapshot_every`` iterations (0: never) with the
    image shrunk to at most ``snapshot_size`` px (long side); a ``Preview`` every
    ``preview_seconds`` (0: never; preview.py). ``schedule`` is the whole pyramid."""

    workdir: WorkDir
    save_every: int = 0
    snapshot_every: int = 0
    snapshot_size: int = 512
    save_minutes: float = 0.0
    schedule: Sequence[Stage] = ()
    preview_seconds: float = 0.0


class ProgressSaves:
    """Saves the stage in progress at the first report after each ``save_every`` iterations or
    ``save_minutes`` minutes; never at the stage's last iteration (the finished stage is saved next).
    A save that fails (a full disk) is reported and tried again later: the render goes on."""

    def __init__(self, checkpointing: Checkpointing, stage: Stage, done: int = 0, sink: Sink = null_sink) -> None:
        self.checkpointing, self.stage, self.sink = checkpointing, stage, sink
        self.at, self.time = done, time.monotonic()
        self.failing = False  # said once when saves start failing, once when they work again

    def due(self, iteration: int) -> bool:
        every, minutes = self.checkpointing.save_every, self.checkpointing.save_minutes
        if iteration >= self.stage.iterations:
            return False
        by_count = bool(every) and iteration // every > self.at // every
        return by_count or (minutes > 0 and time.monotonic() - self.time >= minutes * 60)

    def __call__(self, iteration: int, image: Tensor, optimizer_state: dict[str, Tensor]) -> None:
        if self.due(iteration):
            self._save(iteration, image, optimizer_state)

    def stopped(self, stop: Stopped) -> None:
        """Ctrl-C: save where the stage got to now (unless a save holds it already), its last
        iteration included; a failure is reported and the older save stands."""
        if stop.iteration > self.at:
            self._save(stop.iteration, stop.image, stop.state, stopping=True)

    def _save(self, iteration: int, image: Tensor, optimizer_state: dict[str, Tensor], stopping: bool = False) -> None:
        workdir = self.checkpointing.workdir
        self.at, self.time = iteration, time.monotonic()
        try:
            workdir.save_progress(self.stage, self.checkpointing.schedule, iteration, image, optimizer_state)
            workdir.save_current(shown(image, optimizer_state).clamp(0, 1))  # what would be written
        except OutputError as exc:
            then = "the last save stands" if stopping else "the render goes on and tries again at each save"
            if stopping or not self.failing:
                self.sink(Message(f"could not save stage {self.stage.index + 1}'s progress at iteration {iteration} "
                                  f"({exc}); {then}"))
            self.failing = True
            return
        if self.failing:
            self.sink(Message(f"stage {self.stage.index + 1}'s progress saved again at iteration {iteration}"))
        self.failing = False


def saved_progress(checkpointing: Checkpointing | None, stage: Stage, went: int, start: Tensor,
                    warm: dict[str, Tensor] | None, sink: Sink) -> tuple[Tensor, dict[str, Tensor] | None]:
    """The image (and Adam's state) a resumed stage goes on from after ``went`` saved iterations;
    ``start`` when none. L-BFGS keeps no history across the break (it rebuilds it)."""
    if not went or checkpointing is None:
        return start, warm
    image, state = checkpointing.workdir.load_progress(stage.index)
    sink(Message(f"resuming stage {stage.index + 1} at iteration {went} of {stage.iterations}"))
    return image.to(start.device), state or warm
