"""One time left and one text per event: the log lines, the terminal's bars, a batch job's log and
the live page say the same things (``io.progresstext``)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from hires_nst.batch.job import JobLog, _tee
from hires_nst.cli.progress import BatchDisplay, ProgressDisplay
from hires_nst.events import Event, JobFinished, JobStarted, Planned, PlannedStage, StageFinished, StageStarted, Step
from hires_nst.io.logprogress import LogProgress
from hires_nst.io.progresstext import WorkLeft, clock_text
from hires_nst.io.trace import COLUMNS
from hires_nst.web.server import render_state

PLAN = Planned((PlannedStage(100, 100, 20, 0), PlannedStage(200, 200, 40, 0)), "cpu", "original")
LOSSES = {"total": 2.5, "content": 1.0, "style": 0.15, "tv": 0.0}
SECONDS = [0.5, 0.7, 0.4, 0.6, 0.5, 0.9, 0.3, 0.5, 0.6, 0.5]  # per iteration of stage 2, uneven


def _steps() -> list[Step]:
    return [Step(1, i, 40, LOSSES, s) for i, s in enumerate(SECONDS, 1)]


def _logged(events: list[Event]) -> list[str]:
    lines: list[str] = []
    log = LogProgress(lines.append, every=0)  # a line for every step
    for event in events:
        log(event)
    return [line.split(" ", 1)[1] for line in lines]  # without the time of day


def _live_page_eta(folder: Path) -> float:
    folder.mkdir()
    (folder / "status.json").write_text(json.dumps({"state": "running", "stage": 1, "stages": 2}))
    schedule = [[s.width, s.height, s.iterations] for s in PLAN.stages]
    (folder / "settings.json").write_text(json.dumps({"fingerprint": {}, "schedule": schedule}))
    rows = [",".join(COLUMNS)]
    for step in _steps():
        values = {"stage": 1, "width": 200, "height": 200, "iteration": step.iteration, "total": 2.5, "content": 1,
                  "style": 0.15, "tv": 0, "seconds": step.seconds, "elapsed": 1.0, "peak_memory_mb": 10.0}
        rows.append(",".join(str(values[c]) for c in COLUMNS))
    (folder / "trace.csv").write_text("\n".join(rows) + "\n")
    return render_state(folder)["eta"]


def test_the_log_lines_the_bars_and_the_live_page_give_one_time_left(tmp_path: Path) -> None:
    started = StageStarted(1, 2, 200, 200, 40, done=0)
    logged = [line for line in _logged([PLAN, started, *_steps()]) if " it " in line]
    display = ProgressDisplay(Console(file=io.StringIO()))
    bars: list[str] = []
    for event in [PLAN, started, *_steps()]:
        display(event)
        if isinstance(event, Step):
            bars.append(next(t for t in display.progress.tasks if t.id == display.overall).fields["eta"])

    assert [line.rsplit(" eta ", 1)[1] for line in logged] == bars
    # 30 iterations of 0.04 MP left at the stage's mean rate so far: 5.5 s over 10 iterations.
    expected = 30 * sum(SECONDS) / len(SECONDS)
    assert bars[-1] == clock_text(expected) == clock_text(_live_page_eta(tmp_path / "work"))
    left = WorkLeft.of(PLAN)
    assert [left.step(s.stage, s.iteration, s.iterations, s.seconds, s.covered) for s in _steps()][-1] == \
        _live_page_eta(tmp_path / "again")


def test_each_event_reads_the_same_in_the_log_the_bars_and_the_job_log() -> None:
    started = StageStarted(1, 2, 200, 200, 40, done=4)
    step = Step(1, 8, 40, LOSSES, 0.25, covered=4)
    finished = StageFinished(1, 200, 200, 12.0, LOSSES, iterations=40)
    logged = _logged([PLAN, started, step, finished])

    handle = io.StringIO()
    job_log = _tee(lambda event: None, JobLog(handle))
    for event in [PLAN, started, Step(1, 40, 40, LOSSES, 0.25), finished]:
        job_log(event)
    job_lines = [line.split(" ", 1)[1] for line in handle.getvalue().splitlines()]

    assert logged[0] == job_lines[0] == "device cpu; weights original; 2 stage(s): 100x100 x20, 200x200 x40"
    assert logged[1] == job_lines[1] == "stage 2/2 200x200: started, 40 iterations, going on from iteration 4"
    assert logged[2].startswith("stage 2/2 it 8/40 loss 2.5 0.25 s/it eta ")
    assert job_lines[2] == "stage 2/2 it 40/40 loss 2.5 0.25 s/it"  # the job log's last tenth
    assert logged[3] == job_lines[3] == "stage 2/2 200x200: finished in 12.0s, loss 2.5"

    display = ProgressDisplay(Console(file=io.StringIO()))
    for event in [PLAN, started, step]:
        display(event)
    stage = next(t for t in display.progress.tasks if t.id == display.stage_task)
    assert stage.description == "stage 2/2 200x200" and stage.fields["info"] == "it 8/40 loss 2.5 0.25 s/it"
    display(finished)
    assert logged[3].endswith(stage.fields["info"])


def test_a_job_reads_the_same_in_the_batch_log_and_on_the_terminal() -> None:
    events: list[Event] = [JobStarted("harbour", 0, 2, "cuda:0"), JobFinished("harbour", "failed", 3.0, "boom")]
    out = io.StringIO()
    display = BatchDisplay(Console(file=out, width=200))
    for event in events:
        display(event)
    lines: list[str] = []
    log = LogProgress(lines.append)
    for event in events:
        log(event)
    assert [line.split(" ", 1)[1] for line in lines] == ["[1/2] harbour on cuda:0", "harbour: failed in 3.0s: boom"]
    assert [line.strip() for line in out.getvalue().splitlines()] == ["[1/2] harbour on cuda:0",
                                                                      "harbour: failed in 3.0s: boom"]


def _report_stage(left: WorkLeft, stage: int, seconds: float) -> float | None:
    """Every iteration of ``stage`` reported at ``seconds`` each; the time left after the last."""
    iterations = left.iterations[stage]
    return [left.step(stage, i, iterations, seconds, 1) for i in range(1, iterations + 1)][-1]


def test_the_time_left_after_two_stages_prices_the_third_by_a_fitted_fixed_and_per_pixel_cost() -> None:
    def cost(side: int) -> float:  # seconds per iteration: 2 s fixed + 1e-5 s per pixel (synthetic)
        return 2.0 + 1e-5 * side * side

    left = WorkLeft([(256, 256, 100), (512, 512, 100), (1024, 1024, 50)])
    proportional = _report_stage(left, 0, cost(256))
    assert proportional == pytest.approx(cost(256) * (4 * 100 + 16 * 50))  # one stage measured: pixels x iterations
    _report_stage(left, 1, cost(512))
    left.step(1, 99, 100, cost(512), 1)  # stage 2 not finished yet
    predicted = left.seconds_left(1, 99)
    truth = 1 * cost(512) + 50 * cost(1024)
    assert predicted is not None and abs(predicted - truth) <= 0.3 * truth
    assert predicted == pytest.approx(truth, rel=1e-6)  # a line through two exact rates is exact
    # pixels x iterations from stage 2's rate alone would be 48% over:
    assert (cost(512) + 50 * 4 * cost(512)) / truth > 1.45


def test_a_cost_that_does_not_grow_with_the_pixels_is_taken_as_flat_not_falling() -> None:
    left = WorkLeft([(100, 100, 10), (200, 200, 10), (400, 400, 10)])
    _report_stage(left, 0, 1.0)  # the first stage slowed by warm-up
    _report_stage(left, 1, 0.5)
    assert left.cost() == (0.5, 0.0)
    assert left.seconds_left(1, 10) == 10 * 0.5
