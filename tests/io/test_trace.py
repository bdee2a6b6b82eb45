"""trace.csv beside every render (columns, one row per iteration, resume) and ``hires-nst compare``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hires_nst.cli.main import app
from hires_nst.config.settings import resolve
from hires_nst.engine.render import RenderJob, render
from hires_nst.errors import InputError, Interrupted
from hires_nst.events import StageStarted, Step
from hires_nst.io import images
from hires_nst.io.trace import COLUMNS, TraceWriter, compare_runs, read_trace

EXPECTED_COLUMNS = ["stage", "width", "height", "iteration", "total", "content", "style", "tv", "seconds", "elapsed",
                    "peak_memory_mb"]


def _inputs(folder: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    images.save_image(folder / "c.png", rng.random((48, 64, 3)).astype(np.float32))
    images.save_image(folder / "s.png", rng.random((40, 40, 3)).astype(np.float32))
    return folder / "c.png", folder / "s.png"


def _job(tmp_path: Path, name: str = "out", optimizer: str = "lbfgs", **kwargs) -> RenderJob:
    content, style = _inputs(tmp_path)
    config = resolve(("test", {"pyramid": {"min_size": 32, "max_size": 64, "iterations": [5, 3]},
                               "loss": {"content_layers": ["conv2_1"], "style_layers": ["conv1_1", "conv2_1"]},
                               "optim": {"optimizer": optimizer},
                               "output": {"work_dir": str(tmp_path / f"work-{name}")}}))
    return RenderJob(content, (style,), tmp_path / f"{name}.png", config, **kwargs)


def test_trace_has_one_row_per_iteration_of_the_schedule_beside_the_settings(tmp_path: Path) -> None:
    job = _job(tmp_path)
    result = render(job)
    beside = tmp_path / "out.png.trace.csv"
    with open(beside, newline="") as handle:
        assert next(csv.reader(handle)) == EXPECTED_COLUMNS == list(COLUMNS)
    rows = read_trace(beside)
    assert [(r["stage"], r["width"], r["height"], r["iteration"]) for r in rows] == (
        [("0", "32", "24", str(i)) for i in range(1, 6)] + [("1", "64", "48", str(i)) for i in range(1, 4)])
    assert beside.read_bytes() == (result.work_dir / "trace.csv").read_bytes()
    assert json.loads(result.settings.read_text())["trace"] == str(beside)
    elapsed = [float(r["elapsed"]) for r in rows]
    assert elapsed == sorted(elapsed) and elapsed[-1] == pytest.approx(sum(float(r["seconds"]) for r in rows), abs=0.01)
    assert all(float(r["peak_memory_mb"]) > 10 for r in rows)  # the process's peak RSS on the CPU
    for r in rows:
        weight = job.config.loss.style_weight
        assert float(r["total"]) == pytest.approx(float(r["content"]) + weight * float(r["style"]), rel=1e-6)


def test_trace_rows_are_on_disk_as_soon_as_the_step_is(tmp_path: Path) -> None:
    seen: list[int] = []

    def count_rows(event) -> None:
        if isinstance(event, Step):
            seen.append(len(read_trace(tmp_path / "work-out" / "trace.csv")))

    render(_job(tmp_path), count_rows)
    # The trace writer sees a step before the progress sink does: a sink that stops the render
    # (Ctrl-C in a display) finds its row on disk already.
    assert seen == list(range(1, 9))


def test_an_interrupted_render_keeps_its_trace_and_resume_redoes_only_the_lost_rows(tmp_path: Path) -> None:
    def stop_in_stage_two(event) -> None:
        if isinstance(event, Step) and event.stage == 1 and event.iteration == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted):
        render(_job(tmp_path), stop_in_stage_two)
    kept = read_trace(tmp_path / "work-out" / "trace.csv")
    assert [(r["stage"], r["iteration"]) for r in kept] == (
        [("0", str(i)) for i in range(1, 6)] + [("1", "1"), ("1", "2")])

    render(_job(tmp_path, resume=True))
    rows = read_trace(tmp_path / "out.png.trace.csv")
    assert [(r["stage"], r["iteration"]) for r in rows] == (
        [("0", str(i)) for i in range(1, 6)] + [("1", str(i)) for i in range(1, 4)])
    assert rows[:5] == kept[:5]  # the finished stage's rows are the ones written before the interruption
    assert float(rows[5]["elapsed"]) > float(rows[4]["elapsed"])


def test_a_fresh_render_starts_a_fresh_trace(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    writer = TraceWriter(path)
    writer(StageStarted(0, 1, 8, 6, 2))
    writer(Step(0, 1, 2, {"total": 1.5, "content": 0.5, "style": 0.1, "tv": 0.0}, 0.25, 3 * 2**20))
    writer.close()
    assert read_trace(path) == [{"stage": "0", "width": "8", "height": "6", "iteration": "1", "total": "1.5",
                                 "content": "0.5", "style": "0.1", "tv": "0", "seconds": "0.2500",
                                 "elapsed": "0.250", "peak_memory_mb": "3.0"}]
    TraceWriter(path).close()
    assert read_trace(path) == []


def test_elapsed_time_counts_every_iteration_a_sparse_report_covers(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "trace.csv")
    writer(StageStarted(0, 1, 8, 6, 20))
    losses = {"total": 1.0, "content": 0.5, "style": 0.05, "tv": 0.0}
    writer(Step(0, 10, 20, losses, 0.5, 0, covered=10))  # --sync-every 10: one row per 10 iterations
    writer(Step(0, 20, 20, losses, 0.25, 0, covered=10))
    writer.close()
    assert [row["elapsed"] for row in read_trace(tmp_path / "trace.csv")] == ["5.000", "7.500"]


def test_compare_summarises_runs_given_as_files_folders_or_work_dirs(tmp_path: Path) -> None:
    runs = {name: render(_job(tmp_path, name, optimizer=name)) for name in ("lbfgs", "adam")}
    by_file = compare_runs([runs["lbfgs"].settings])
    assert len(by_file) == 1
    summary = by_file[0]
    record = json.loads(runs["lbfgs"].settings.read_text())
    assert (summary.optimizer, summary.backbone, summary.lr, summary.width, summary.height, summary.iterations) == (
        "lbfgs", "vgg19", 1.0, 64, 48, 8)
    assert summary.losses == record["stages"][-1]["losses"] and summary.seconds == record["seconds"]
    assert summary.peak_memory_mb is not None and summary.peak_memory_mb > 10
    # A folder holds both records; a work dir points at its output; each run is listed once.
    both = compare_runs([tmp_path, runs["adam"].work_dir, runs["adam"].settings])
    assert [s.optimizer for s in both] == ["adam", "lbfgs"]
    with pytest.raises(InputError, match="no finished render in"):
        compare_runs([_empty(tmp_path)])
    with pytest.raises(InputError, match="not the settings file of a render"):
        compare_runs([tmp_path / "work-adam" / "settings.json"])

    printed = CliRunner().invoke(app, ["compare", str(tmp_path)])
    assert printed.exit_code == 0, printed.output
    for text in ("optimizer", "lbfgs", "adam", "64x48", f"{summary.losses['total']:.4g}"):
        assert text in printed.stdout
    missing = CliRunner().invoke(app, ["compare", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "run not found" in missing.stderr


def _empty(tmp_path: Path) -> Path:
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


def test_compare_shows_brackets_in_paths_and_names_as_they_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hires_nst.io.trace
    from hires_nst.io.trace import RunSummary

    run = RunSummary("dir [red]x[/red]/out [b].png", "[bold]vgg19", "lbfgs", 1.0, 64, 48, 8, {"total": 1.5}, 2.0, None)
    monkeypatch.setattr(hires_nst.io.trace, "compare_runs", lambda paths: [run])

    printed = CliRunner().invoke(app, ["compare", str(tmp_path)])

    assert printed.exit_code == 0, printed.output
    assert "dir [red]x[/red]/out [b].png" in printed.stdout and "[bold]vgg19" in printed.stdout
