"""Running a batch unattended: what it may write checked before anything runs, one run per output
folder (a lock), jobs one after another (or one worker process per device), the manifest rewritten
after every change, failures recorded while the batch goes on, finished jobs
skipped and unfinished ones resumed from their last stage on a re-run, contact sheets for grids.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hires_nst.batch.job import Ledger, Outcome, run_job
from hires_nst.batch.jobs import Batch, BatchJob
from hires_nst.batch.parallel import run_parallel
from hires_nst.engine.render import disk_needs
from hires_nst.engine.resume import render_plan
from hires_nst.errors import ConfigError, OutputError
from hires_nst.events import JobFinished, JobStarted, Message, Sink, null_sink
from hires_nst.io import images
from hires_nst.io.contact_sheet import labelled_grid
from hires_nst.io.safety import check_free_space
from hires_nst.io.worklock import BATCH_LOCK, batch_lock
from hires_nst.io.writeplan import WritePlan, check_writes

SHEET_CELL = 256  # contact-sheet row height in pixels
NO_LIMIT = 2**62  # our own outputs are loaded for the contact sheet without the input pixel limit


# Runs the jobs a batch still has to do, recording them in the ledger; returns their outcomes by name
# and, if it was stopped, what was kept and how to resume (else "").
Runner = Callable[[Sequence[BatchJob], Ledger, Sink], tuple[dict[str, Outcome], str]]


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
    check_writes(write_plan(batch))
    with open_output_dir(batch):
        previous = read_manifest(batch.manifest)
        done = [job for job in batch.jobs if _finished_before(job, previous.get(job.name))]
        todo = [job for job in batch.jobs if job not in done]
        prepare(batch, todo)
        ledger = Ledger(batch, previous, restart)
        if runner is not None:
            ran, stopped = runner(todo, ledger, sink)
        elif devices:
            ran, stopped = run_parallel(todo, ledger, sink, devices)
        else:
            ran, stopped = run_sequential(todo, ledger, sink)
        outcomes = {job.name: _earlier(job, previous[job.name]) for job in done}
        outcomes.update(ran)
        outcomes = {job.name: outcomes.get(job.name, Outcome(job.name, "pending")) for job in batch.jobs}
        sheets = () if stopped else write_sheets(batch, ledger, sink)
    return BatchResult(tuple(outcomes.values()), batch.manifest, sheets, stopped)


def write_plan(batch: Batch) -> WritePlan:
    """Everything the batch writes and reads, every job's and grid's together, so that no output,
    settings, trace, animation, contact sheet or work dir of one job is any job's input."""
    plan = WritePlan()
    for job in batch.jobs:
        work = Path(job.render.config.output.work_dir)
        plan.add(render_plan(job.render, job.render.output, work, f" of job {job.name!r}"))
    for grid in batch.grids:
        plan.write(grid.sheet, f"contact sheet of grid {grid.name!r}")
    plan.write(batch.manifest, "manifest of the batch")
    plan.write(batch.output_dir / BATCH_LOCK, "lock of the batch")
    return plan


@contextlib.contextmanager
def open_output_dir(batch: Batch) -> Iterator[None]:
    """Make the output folder, check it can be written, and hold its lock (one run at a time) meanwhile."""
    try:
        batch.output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=batch.output_dir, prefix=".hires-nst-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write to the batch's output folder {batch.output_dir}: "
                          f"{exc.strerror or exc}") from None
    with batch_lock(batch.output_dir):
        yield


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


def prepare(batch: Batch, todo: Sequence[BatchJob]) -> None:
    """Fail now, not at 3 a.m.: the output folder's disk must hold every job's files."""
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
