"""Where a render's work dir is: absolute, beside the output (``out.png.work``) unless --work-dir says
otherwise, so that the same render resumed from another folder finds its checkpoints.

Before ``OUT.work`` the default was ``outputs/work/<name>-<hash>`` under the folder a render was
started from; ``--resume`` still goes on from such a dir when the new place holds nothing.

Also what a render reads and writes (``input_files``, ``render_plan``), for ``writeplan.check_writes``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from hires_nst.config.regionspec import mask_files
from hires_nst.config.renderjob import RenderJob
from hires_nst.engine.outputs import output_path, written_files
from hires_nst.events import Message, Sink
from hires_nst.io.checkpoints import WorkDir
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
    plan.work_dir(work_dir, f"work dir{owner}")
    for what, path in input_files(job).items():
        plan.read(path, f"{what}{owner}")
    return plan
