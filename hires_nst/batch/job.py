"""One job of a batch: rendering it with its own log, every failure turned into an ``Outcome``
(``errors.classify``), and the manifest's ledger of every job's status. Shared by the sequential
runner (``batch.run``) and the worker processes (``batch.parallel``)."""

from __future__ import annotations

import datetime
import json
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from hires_nst.batch.jobs import Batch, BatchJob
from hires_nst.engine.render import render
from hires_nst.errors import DiskFullError, HiresNSTError, Interrupted, classify
from hires_nst.events import Event, JobFinished, Message, Planned, Sink, StageFinished, StageStarted, Step, null_sink
from hires_nst.io import images
from hires_nst.io.checkpoints import WorkDir
from hires_nst.io.progresstext import (
    job_finished_text,
    plan_text,
    stage_finished_text,
    stage_text,
    started_text,
    step_text,
)
from hires_nst.io.safety import deferred_interrupts
from hires_nst.io.writeplan import claim_work_dir

LOG = "job.log"


@dataclass(frozen=True)
class Outcome:
    """How one job ended in this run (or, with ``skipped``, in an earlier one)."""

    name: str
    status: str  # finished | failed | interrupted | pending (not reached)
    seconds: float = 0.0
    width: int | None = None
    height: int | None = None
    error: str = ""
    stages_reused: int = 0
    device: str = ""
    skipped: bool = False


def run_job(job: BatchJob, restart: bool, sink: Sink = null_sink, device: str = "", label: str = "") -> Outcome:
    """Render one job, its events also written to its log; every failure becomes an Outcome.

    ``device`` (a batch worker's): the job runs there alone, its own ``devices`` list set aside, so
    that one worker's job cannot take every worker's GPU. ``label`` names it in the outcome when the
    worker sees its GPU under another index (``batch.parallel.pin_device``).
    """
    work = WorkDir(Path(job.render.config.output.work_dir))
    render_job = replace(job.render, resume=not restart and work.has_work(), restart=restart)
    if device:
        config = render_job.config
        render_job = replace(render_job, config=replace(config, device=replace(config.device, device=device,
                                                                                devices="")))
    device = label or render_job.config.device.device
    began = time.perf_counter()
    log_path = work.path / LOG
    try:
        claim_work_dir(work.path)  # the batch checked it (batch.run.write_plan); made and marked here
        log = JobLog(log_path.open("a", encoding="utf-8", buffering=1))
    except HiresNSTError as exc:
        return Outcome(job.name, "failed", 0.0, error=str(exc), device=device)
    except OSError as exc:
        return Outcome(job.name, "failed", 0.0, error=f"cannot write the job log {log_path}: {exc.strerror or exc}",
                       device=device)
    with log:
        _log(log, f"start {job.name}: {render_job.content} in the style of "
                  f"{', '.join(map(str, render_job.styles))} -> {render_job.output}"
                  f"{' (restart: the job changed)' if restart else ''}")
        outcome = _attempt(job.name, render_job, _tee(sink, log), log, device)
        if not outcome.seconds:  # a finished render knows its total, earlier runs included
            outcome = replace(outcome, seconds=round(time.perf_counter() - began, 3))
        _log(log, job_finished_text(JobFinished(job.name, outcome.status, outcome.seconds, outcome.error)))
    return outcome


class JobLog:
    """A job's log file that a full disk cannot break: a line that does not fit is dropped (and
    the gap said once there is room again); the render goes on either way."""

    def __init__(self, handle: TextIO) -> None:
        self.handle, self.dropped = handle, 0

    def write(self, text: str) -> None:
        try:
            if self.dropped:
                self.handle.write(f"({self.dropped} log line(s) lost: the disk was full)\n")
                self.dropped = 0
            self.handle.write(text)
        except OSError:
            self.dropped += 1

    def __enter__(self) -> JobLog:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.handle.close()
        except OSError:
            pass


def _attempt(name: str, job: Any, sink: Sink, log: JobLog, device: str) -> Outcome:
    try:
        result = render(job, sink)
    except (KeyboardInterrupt, Exception) as exc:  # one job fails, the night goes on
        failure = classify(exc)
        if failure.bug:
            log.write(traceback.format_exc())
            return Outcome(name, "failed", error=f"internal error: {failure.message} (traceback in the job log)",
                           device=device)
        # An interrupted job says what it kept; the batch gives its own advice on resuming.
        error = exc.detail if isinstance(exc, Interrupted) else failure.message
        return Outcome(name, failure.status, error=error, device=device)
    return Outcome(name, "finished", round(result.seconds, 3), result.width, result.height,
                   stages_reused=result.stages_reused, device=device)


def _tee(sink: Sink, log: JobLog) -> Sink:
    stages = 0

    def both(event: Event) -> None:
        nonlocal stages
        if isinstance(event, StageStarted):
            stages = event.stages
        line = _log_line(event, stages)
        if line:
            _log(log, line)
        sink(event)
    return both


def _log_line(event: Event, stages: int = 0) -> str | None:
    """The job log's line for ``event`` (None: none), in ``progresstext``'s words as every log."""
    if isinstance(event, Planned):
        return plan_text(event)
    if isinstance(event, StageStarted):
        return started_text(event)
    if isinstance(event, Step) and _tenth_passed(event):
        return f"{stage_text(event.stage, stages)} {step_text(event)}"
    if isinstance(event, StageFinished):
        return stage_finished_text(event, stages)
    if isinstance(event, Message):
        return event.text
    return None


def _tenth_passed(step: Step) -> bool:
    """Log about ten lines a stage: at the first report past each tenth, and at the end."""
    tenth = max(1, step.iterations // 10)
    return step.iteration == step.iterations or (step.iteration - step.covered) // tenth < step.iteration // tenth


def _log(log: JobLog, text: str) -> None:
    log.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} {text}\n")


# --- before and after --------------------------------------------------------------------------------


class Ledger:
    """The manifest's records, rewritten (atomically, shielded from Ctrl-C) after every change."""

    def __init__(self, batch: Batch, previous: dict[str, dict[str, Any]], restart_all: bool = False) -> None:
        self.batch, self.previous, self.restart_all = batch, previous, restart_all
        self.records = {job.name: self._record(job, previous.get(job.name)) for job in batch.jobs}
        self.write()

    def _record(self, job: BatchJob, previous: dict[str, Any] | None) -> dict[str, Any]:
        kept = previous if previous and previous.get("spec") == job.spec else {}
        status = kept.get("status", "pending")
        if status == "running":  # the run that started it died without a word (power cut, kill -9)
            status = "interrupted"
        root = self.batch.output_dir
        work = Path(job.render.config.output.work_dir)
        record = {"name": job.name, "status": status,
                  "output": str(job.render.output.relative_to(root)), "content": str(job.render.content),
                  "styles": [str(s) for s in job.render.styles], "width": kept.get("width"),
                  "height": kept.get("height"), "seconds": kept.get("seconds"), "error": kept.get("error"),
                  "device": kept.get("device"), "spec": job.spec, "work_dir": str(work.relative_to(root)),
                  "log": str((work / LOG).relative_to(root))}
        if job.cell is not None:
            record.update(grid=job.cell.grid, row=job.cell.row, col=job.cell.col, row_label=job.cell.row_label,
                          col_label=job.cell.col_label)
        return record

    def restart(self, job: BatchJob) -> bool:
        """Discard the job's checkpoints when it changed since they were made (or when asked to)."""
        previous = self.previous.get(job.name)
        return self.restart_all or (previous is not None and previous.get("spec") != job.spec)

    def started(self, name: str, device: str = "") -> None:
        self.records[name].update(status="running", error=None, device=device or None)
        self.write()

    def ended(self, outcome: Outcome) -> None:
        self.records[outcome.name].update(status=outcome.status, seconds=outcome.seconds, width=outcome.width,
                                          height=outcome.height, error=outcome.error or None,
                                          device=outcome.device or self.records[outcome.name]["device"])
        self.write()

    def write(self) -> None:
        counts: dict[str, int] = {}
        for record in self.records.values():
            counts[record["status"]] = counts.get(record["status"], 0) + 1
        data = {"job_file": str(self.batch.job_file), "output_dir": str(self.batch.output_dir),
                "updated": datetime.datetime.now().isoformat(timespec="seconds"), "counts": counts,
                "jobs": list(self.records.values())}
        payload = json.dumps(data, indent=2).encode()
        try:
            with deferred_interrupts():
                images.write_atomically(self.batch.manifest, lambda f: f.write(payload))
        except DiskFullError:
            pass  # the records stay in memory; the next change writes them all (the previous file stays whole)

    def stopped_message(self, name: str | None) -> str:
        done = sum(r["status"] == "finished" for r in self.records.values())
        kept = "its finished stages and saved progress are kept in its work dir"
        where = f" during job {name!r} ({kept})" if name else ""
        return (f"batch interrupted{where}; {done} of {len(self.records)} jobs finished; run the same batch "
                f"command again to resume: finished jobs are skipped, unfinished ones resume from their last stage")
