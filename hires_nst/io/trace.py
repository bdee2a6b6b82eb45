"""Loss traces and run summaries: what ``trace.csv`` holds and what ``hires-nst compare`` reads.

A render's trace has one row per iteration, written (and flushed) as the render runs into the
work dir's ``trace.csv``, so an interrupted render keeps it; ``--resume`` drops the rows of stages
it redoes and appends. The finished trace is copied beside the output as ``OUT.trace.csv``, next
to the settings ``OUT.json``.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hires_nst.errors import InputError
from hires_nst.events import Event, Message, StageStarted, Step
from hires_nst.io import images

COLUMNS = ("stage", "width", "height", "iteration", "total", "content", "style", "tv", "seconds", "elapsed",
           "peak_memory_mb")


def trace_path(output: Path) -> Path:
    """``out.png`` -> ``out.png.trace.csv``, beside the settings ``out.png.json``."""
    return output.with_name(output.name + ".trace.csv")


def read_trace(path: Path) -> list[dict[str, str]]:
    """The rows of a trace file; none if it does not exist. A row cut short (a full disk, a crash
    in the middle of a write) is dropped: every whole row ends with a newline and parses."""
    try:
        with open(path, newline="") as handle:
            text = handle.read()
    except FileNotFoundError:
        return []
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # the last row is torn
    return [row for row in csv.DictReader(io.StringIO(text)) if _whole(row)]


def _whole(row: dict[str, Any]) -> bool:
    """A row with every column, its counters integers and its numbers numbers."""
    if None in row or any(row.get(c) is None for c in COLUMNS):
        return False
    try:
        [int(row[c]) for c in ("stage", "width", "height", "iteration")]
        [float(row[c]) for c in COLUMNS[4:]]
    except ValueError:
        return False
    return True


class TraceWriter:
    """An event sink writing one row per ``Step``: stage (0-based, as in the settings and the work
    dir's ``stage-K`` files), size, iteration (1-based), losses, seconds for the iteration, seconds
    since the trace began (summed over all stages) and peak memory in MiB.

    A row that does not fit on the disk is cut off again (the file ends at a whole row), kept in
    memory and written before the next one: a full disk is reported once (``report``), never fatal."""

    def __init__(self, path: Path, keep_stages: int = 0, keep_iterations: int = 0,
                 report: Callable[[Event], None] | None = None) -> None:
        """A resumed render keeps the rows of its ``keep_stages`` finished stages, and of the next
        stage's first ``keep_iterations`` (its saved progress)."""
        def kept_row(row: dict[str, str]) -> bool:
            stage = int(row["stage"])
            return stage < keep_stages or (stage == keep_stages and int(row["iteration"]) <= keep_iterations)

        kept = [row for row in read_trace(path) if kept_row(row)] if keep_stages or keep_iterations else []
        self.elapsed = float(kept[-1]["elapsed"]) if kept else 0.0
        images.write_atomically(path, lambda f: f.write(_csv_text([list(COLUMNS)] + [
            [row.get(c, "") for c in COLUMNS] for row in kept]).encode()))
        self.path, self.report = path, report
        self.handle = open(path, "ab", buffering=0)  # one write per row, nothing left in a buffer
        self.length = self.handle.seek(0, os.SEEK_END)  # where the last whole row ends
        self.pending = b""  # rows the disk had no room for yet
        self.reported = False  # the full disk was reported (once, until the rows fit again)
        self.size = (0, 0)

    def __call__(self, event: Event) -> None:
        if isinstance(event, StageStarted):
            self.size = (event.width, event.height)
        elif isinstance(event, Step):
            self.elapsed += event.seconds * event.covered
            losses = [f"{event.losses.get(k, math.nan):.9g}" for k in ("total", "content", "style", "tv")]
            self.pending += _csv_text([[event.stage, *self.size, event.iteration, *losses, f"{event.seconds:.4f}",
                                        f"{self.elapsed:.3f}", f"{event.peak_memory / 2**20:.1f}"]]).encode()
            self._flush()

    def _flush(self) -> None:
        try:
            written = self.handle.write(self.pending)
            if written != len(self.pending):
                raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            self._cut_back()
            if self.report is not None and not self.reported:
                self.reported = True
                self.report(Message(f"cannot write the trace {self.path} ({exc.strerror or exc}); its rows are "
                                    "kept in memory and written when there is room again"))
            return
        self.length += len(self.pending)
        self.pending = b""
        self.reported = False

    def _cut_back(self) -> None:
        """Drop a row written in part: the file ends at its last whole row again."""
        try:
            self.handle.truncate(self.length)
        except OSError:
            pass  # read_trace drops the torn row

    def close(self) -> None:
        if self.pending:
            self._flush()
        self.handle.close()


def _csv_text(rows: Iterable[list[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


@dataclass(frozen=True)
class RunSummary:
    """One finished render, as ``compare`` shows it."""

    run: str  # the output image
    backbone: str
    optimizer: str
    lr: float
    width: int
    height: int
    iterations: int  # over all stages
    losses: dict[str, float]  # final, at the output size
    seconds: float  # the whole render
    peak_memory_mb: float | None  # from the trace, if there is one


def _is_record(data: Any) -> bool:
    return isinstance(data, dict) and "config" in data and isinstance(data.get("stages"), list)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def find_records(path: Path) -> list[Path]:
    """Settings records (``OUT.json``) at ``path``: the file itself, a work dir's finished output, or
    every record in a folder (searched recursively when none lies at its top)."""
    if path.is_file():
        if not _is_record(_load_json(path)):
            raise InputError(f"{path} is not the settings file of a render (OUT.json beside an output)")
        return [path]
    if not path.is_dir():
        raise InputError(f"run not found: {path}")
    status = _load_json(path / "status.json")
    if isinstance(status, dict) and status.get("output"):
        settings = Path(status["output"]).with_name(Path(status["output"]).name + ".json")
        if _is_record(_load_json(settings)):
            return [settings]
    found = [p for p in sorted(path.glob("*.json")) if _is_record(_load_json(p))]
    found = found or [p for p in sorted(path.rglob("*.json")) if _is_record(_load_json(p))]
    if not found:
        raise InputError(f"no finished render in {path} (looked for OUT.json settings files and work dirs)")
    return found


def summarise(record_path: Path) -> RunSummary:
    record = _load_json(record_path)
    last = record["stages"][-1]
    config = record["config"]
    trace = trace_path(record_path.with_name(record_path.name[: -len(".json")]))  # beside the record
    peaks = [float(r["peak_memory_mb"]) for r in read_trace(trace) if r.get("peak_memory_mb")]
    return RunSummary(record.get("output", str(record_path)), config["model"].get("backbone", "vgg19"),
                      config["optim"]["optimizer"], float(record.get("lr_used", 0.0)), last["width"], last["height"],
                      sum(s["iterations"] for s in record["stages"]), last["losses"], float(record["seconds"]),
                      max(peaks) if peaks else None)


def compare_runs(paths: Iterable[Path]) -> list[RunSummary]:
    """Summaries of every finished render found at ``paths``, each record once, in the order given."""
    records = dict.fromkeys(p.resolve() for path in paths for p in find_records(Path(path)))
    return [summarise(p) for p in records]
