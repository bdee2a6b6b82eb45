"""Running a batch unattended: jobs one after another (or one worker process per device), the
manifest rewritten after every change, failures recorded while the batch goes on, finished jobs
skipped and unfinished ones resumed from their last stage on a re-run, contact sheets for grids.
"""

from __future__ import annotations

import datetime
import json
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

import numpy as np

from hires_nst import images
from hires_nst.batch import Batch, BatchJob
from hires_nst.contact_sheet import labelled_grid
from hires_nst.errors import ConfigError, HiresNSTError, Interrupted, OutputError
from hires_nst.events import (Event, JobFinished, JobStarted, Message, Planned, Sink, StageFinished, StageStarted,
                              Step, null_sink)
from hires_nst.render import disk_needs, render
from hires_nst.safety import check_free_space, deferred_interrupts

LOG = "job.log"
SHEET_CELL = 256  # contact-sheet row height in pixels
NO_LIMIT = 2**62  # our own outputs are loaded for the contact sheet without the input pixel limit


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


# Runs the jobs a batch still has to do, recording them in the ledger; returns their outcomes by name
# and, if it was stopped, what was kept and how to resume (else "").
Runner = Callable[[Sequence[BatchJob], "Ledger", Sink], tuple[dict[str, Outcome], str]]


@dataclass(frozen=True)
class BatchResult:
    outcomes: tuple[Outcome, ...]  # in job-file order
    manifest: Path
    sheets: tuple[Path, ...]
    stopped: str = ""  # set when the batch was interrupted: what was kept and how to resume

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def run_batch(batch: Batch, sink: Sink = null_sink, devices: Sequence[str] = (), restart: bool = False,
              runner: Runner | None = None) -> BatchResult:
    """Run every job of ``batch`` that is not finished yet; ``devices`` runs them in parallel,
    one worker process per device, and ``runner`` elsewhere (``cluster.RayRunner``: on a Ray
    cluster). Errors in a job are recorded, not raised."""
    previous = read_manifest(batch.manifest)
    done = [job for job in batch.jobs if _finished_before(job, previous.get(job.name))]
    todo = [job for job in batch.jobs if job not in done]
    prepare(batch, todo)
    ledger = Ledger(batch, previous, restart)
    if runner is not None:
        ran, stopped = runner(todo, ledger, sink)
    elif devices:
        from hires_nst.batch_parallel import run_parallel

        ran, stopped = run_parallel(todo, ledger, sink, devices)
    else:
        ran, stopped = run_sequential(todo, ledger, sink)
    outcomes = {job.name: _earlier(job, previous[job.name]) for job in done}
    outcomes.update(ran)
    outcomes = {job.name: outcomes.get(job.name, Outcome(job.name, "pending")) for job in batch.jobs}
    sheets = () if stopped else write_sheets(batch, ledger, sink)
    return BatchResult(tuple(outcomes.values()), batch.manifest, sheets, stopped)


def run_sequential(todo: Sequence[BatchJob], ledger: Ledger, sink: Sink) -> tuple[dict[str, Outcome], str]:
    """One job after another on each job's own device; stops at the first interruption."""
    outcomes: dict[str, Outcome] = {}
    current: BatchJob | None = None
    try:
        for index, job in enumerate(todo):
            current = job
            ledger.started(job.name)
            sink(JobStarted(job.name, index, len(todo), job.render.config.device.device))
            outcome = run_job(job, ledger.restart(job), sink)
            outcomes[job.name] = outcome
            ledger.ended(outcome)
            sink(JobFinished(job.name, outcome.status, outcome.seconds, outcome.error))
            if outcome.status == "interrupted":
                return outcomes, ledger.stopped_message(job.name)
            current = None
    except KeyboardInterrupt:  # between jobs, or while the manifest was written
        if current is not None and current.name not in outcomes:
            outcomes[current.name] = Outcome(current.name, "interrupted", error="interrupted")
            ledger.ended(outcomes[current.name])
        return outcomes, ledger.stopped_message(current.name if current else None)
    return outcomes, ""


def run_job(job: BatchJob, restart: bool, sink: Sink = null_sink, device: str = "") -> Outcome:
    """Render one job, its events also written to its log; every failure becomes an Outcome."""
    render_job = replace(job.render, resume=not restart, restart=restart)
    if device:
        config = render_job.config
        render_job = replace(render_job, config=replace(config, device=replace(config.device, device=device)))
    device = render_job.config.device.device
    began = time.perf_counter()
    log_path = Path(render_job.config.output.work_dir) / LOG
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("a", encoding="utf-8", buffering=1)
    except OSError as exc:
        return Outcome(job.name, "failed", 0.0, error=f"cannot write the job log {log_path}: {exc.strerror or exc}",
                       device=device)
    with log:
        _log(log, f"start {job.name}: {render_job.content} in the style of "
                  f"{', '.join(map(str, render_job.styles))} -> {render_job.output}"
                  f"{' (restart: the job changed)' if restart else ''}")
        outcome = _attempt(job.name, render_job, _tee(sink, log), log, device)
        outcome = replace(outcome, seconds=round(time.perf_counter() - began, 3))
        _log(log, f"{outcome.status} in {outcome.seconds:.1f}s{': ' + outcome.error if outcome.error else ''}")
    return outcome


def _attempt(name: str, job: Any, sink: Sink, log: TextIO, device: str) -> Outcome:
    try:
        result = render(job, sink)
    except Interrupted as exc:
        return Outcome(name, "interrupted", error=exc.detail, device=device)
    except KeyboardInterrupt:
        return Outcome(name, "interrupted", error="interrupted", device=device)
    except HiresNSTError as exc:
        return Outcome(name, "failed", error=str(exc), device=device)
    except MemoryError:
        return Outcome(name, "failed", error="out of memory; try a smaller size", device=device)
    except Exception as exc:  # a bug, or torch's out-of-memory error: one job fails, the night goes on
        log.write(traceback.format_exc())
        first = (str(exc).strip().splitlines() or [""])[0]
        if type(exc).__name__ == "OutOfMemoryError":
            return Outcome(name, "failed", error=f"out of device memory ({first}); try a smaller size", device=device)
        return Outcome(name, "failed", error=f"internal error: {type(exc).__name__}: {first} (traceback in the job log)",
                       device=device)
    return Outcome(name, "finished", width=result.width, height=result.height, stages_reused=result.stages_reused,
                   device=device)


def _tee(sink: Sink, log: TextIO) -> Sink:
    def both(event: Event) -> None:
        line = _log_line(event)
        if line:
            _log(log, line)
        sink(event)
    return both


def _log_line(event: Event) -> str | None:
    if isinstance(event, Planned):
        return f"device {event.device}; weights {event.weights}; stages " + ", ".join(
            f"{s.width}x{s.height}x{s.iterations}" for s in event.stages)
    if isinstance(event, StageStarted):
        resumed = f" (going on from {event.done})" if event.done else ""
        return (f"stage {event.stage + 1}/{event.stages} {event.width}x{event.height}, {event.iterations} "
                f"iterations{resumed}")
    if isinstance(event, Step) and _tenth_passed(event):
        return (f"  it {event.iteration}/{event.iterations} loss {event.losses.get('total', 0):.5g} "
                f"({event.seconds:.2f}s/it)")
    if isinstance(event, StageFinished):
        losses = ", ".join(f"{k} {v:.5g}" for k, v in event.losses.items())
        return f"stage {event.stage + 1} done in {event.seconds:.1f}s: {losses}"
    if isinstance(event, Message):
        return event.text
    return None


def _tenth_passed(step: Step) -> bool:
    """Log about ten lines a stage: at the first report past each tenth, and at the end."""
    tenth = max(1, step.iterations // 10)
    return step.iteration == step.iterations or (step.iteration - step.covered) // tenth < step.iteration // tenth


def _log(log: TextIO, text: str) -> None:
    log.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} {text}\n")


# --- before and after --------------------------------------------------------------------------------


def prepare(batch: Batch, todo: Sequence[BatchJob]) -> None:
    """Fail now, not at 3 a.m.: the output folder must be writable and hold every job's files."""
    try:
        batch.output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=batch.output_dir, prefix=".hires-nst-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write to the batch's output folder {batch.output_dir}: "
                          f"{exc.strerror or exc}") from None
    needs: dict[Path, int] = {}
    for job in todo:
        size = images.image_size(job.render.content)
        if size is None:
            continue  # a missing or unreadable content fails its own job, with its own message
        try:
            for folder, count in disk_needs(job.render, *size).items():
                needs[folder] = needs.get(folder, 0) + count
        except ConfigError:
            continue  # e.g. an iteration list that does not fit the schedule: the job says so when it runs
    check_free_space(needs)


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The previous run's records by job name; nothing if there was none (or it is unreadable)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {entry["name"]: entry for entry in data["jobs"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _finished_before(job: BatchJob, record: dict[str, Any] | None) -> bool:
    return bool(record and record.get("status") == "finished" and record.get("spec") == job.spec
                and job.render.output.is_file())


def _earlier(job: BatchJob, record: dict[str, Any]) -> Outcome:
    return Outcome(job.name, "finished", record.get("seconds") or 0.0, record.get("width"), record.get("height"),
                   device=record.get("device") or "", skipped=True)


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
        with deferred_interrupts():
            images.write_atomically(self.batch.manifest, lambda f: f.write(payload))

    def stopped_message(self, name: str | None) -> str:
        done = sum(r["status"] == "finished" for r in self.records.values())
        kept = "its finished stages and saved progress are kept in its work dir"
        where = f" during job {name!r} ({kept})" if name else ""
        return (f"batch interrupted{where}; {done} of {len(self.records)} jobs finished; run the same batch "
                f"command again to resume: finished jobs are skipped, unfinished ones resume from their last stage")


def write_sheets(batch: Batch, ledger: Ledger, sink: Sink = null_sink) -> tuple[Path, ...]:
    """One contact sheet per grid: contents down, styles x varied settings across, labelled.
    A cell whose job did not finish is grey, its status under the column label."""
    sheets = []
    for grid in batch.grids:
        cells: list[list[np.ndarray | None]] = [[None] * len(grid.cols) for _ in grid.rows]
        rows = list(grid.rows)
        for job in batch.jobs:
            if job.cell is None or job.cell.grid != grid.name:
                continue
            record = ledger.records[job.name]
            if record["status"] == "finished" and job.render.output.is_file():
                image = images.load_image(job.render.output, "grid output", NO_LIMIT)
                height = min(SHEET_CELL, image.shape[0])
                cells[job.cell.row][job.cell.col] = images.resize(
                    image, max(1, round(image.shape[1] * height / image.shape[0])), height)
            else:
                rows[job.cell.row] += f" ({record['status']}: {grid.cols[job.cell.col]})"
        filled = [c for row in cells for c in row if c is not None]
        shape = filled[0].shape if filled else (SHEET_CELL, SHEET_CELL, 3)
        table = [[c if c is not None else np.full(shape, 0.85, np.float32) for c in row] for row in cells]
        height = min(SHEET_CELL, max(c.shape[0] for row in table for c in row))
        images.save_image(grid.sheet, labelled_grid(table, rows, grid.cols, height))
        sink(Message(f"contact sheet of grid {grid.name!r}: {grid.sheet}"))
        sheets.append(grid.sheet)
    return tuple(sheets)
