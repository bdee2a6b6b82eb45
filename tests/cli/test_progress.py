"""The rich display's bars: weighted by pixels x iterations, sparse reports and resumes counted right."""

from __future__ import annotations

import io

from rich.console import Console

from hires_nst.cli.progress import BatchDisplay, ProgressDisplay
from hires_nst.events import JobStarted, Planned, PlannedStage, StageFinished, StageStarted, Step

LOSSES = {"total": 1.0, "content": 0.5, "style": 0.05, "tv": 0.0}
PLAN = Planned((PlannedStage(1000, 1000, 100, 0), PlannedStage(2000, 1000, 50, 0)), "cpu", "original")


def task(progress, task_id):
    return next(t for t in progress.tasks if t.id == task_id)


def test_the_overall_bar_counts_every_iteration_of_a_sparse_report() -> None:
    display = ProgressDisplay(Console(file=io.StringIO()))
    display(PLAN)
    display(StageStarted(0, 2, 1000, 1000, 100))
    display(Step(0, 10, 100, LOSSES, 0.1, covered=10))  # --sync-every 10
    overall = task(display.progress, display.overall)
    assert (overall.completed, overall.total) == (10.0, 200.0)  # megapixel-iterations: 1 MP x 10 of 100 + 2 x 50


def test_a_resumed_render_counts_the_reused_work_as_done_in_the_overall_bar() -> None:
    display = ProgressDisplay(Console(file=io.StringIO()))
    display(PLAN)
    display(StageStarted(1, 2, 2000, 1000, 50, done=20))  # stage 1 reused, stage 2 saved at iteration 20
    overall = task(display.progress, display.overall)
    assert (overall.completed, overall.total) == (140.0, 200.0)  # 1 MP x 100, then 2 MP x 20 of 50
    display(Step(1, 30, 50, LOSSES, 0.1, covered=10))
    overall = task(display.progress, display.overall)
    assert (overall.completed, overall.total) == (160.0, 200.0)  # 80%: as far as the work is, not this run
    stage = task(display.progress, display.stage_task)
    assert (stage.completed, stage.total) == (30, 50)


def test_a_stage_that_converged_early_counts_whole_in_the_overall_bar() -> None:
    display = ProgressDisplay(Console(file=io.StringIO()))
    display(PLAN)
    display(StageStarted(0, 2, 1000, 1000, 100))
    display(Step(0, 40, 100, LOSSES, 0.1, covered=40))
    display(StageFinished(0, 1000, 1000, 4.0, LOSSES, iterations=40))
    assert task(display.progress, display.overall).completed == 100.0


def test_the_batch_bar_of_a_resumed_job_reaches_its_end() -> None:
    display = BatchDisplay(Console(file=io.StringIO()))
    display(JobStarted("poster", 0, 1))
    display(PLAN)
    display(StageStarted(1, 2, 2000, 1000, 50, done=40))
    display(Step(1, 50, 50, LOSSES, 0.1, covered=10))
    bar = task(display.progress, display.task)
    assert bar.completed == bar.total == 200.0


def test_the_printed_plan_shows_each_stages_tiles_estimated_peak_and_budget() -> None:
    out = io.StringIO()
    plan = Planned((PlannedStage(4096, 4096, 100, int(15.42 * 2**30), None, 1, int(18.4 * 2**30)),
                    PlannedStage(8192, 8192, 50, int(14.27 * 2**30), 2736, 9, int(18.4 * 2**30))), "cuda:0", "original")
    ProgressDisplay(Console(file=out, width=200))(plan)
    text = out.getvalue()
    assert "stage 1: 4096x4096, 100 iterations, untiled, ~15.42 GiB peak (estimated) of a 18.40 GiB budget" in text
    assert "stage 2: 8192x8192, 50 iterations, 9 tiles of 2736 px, ~14.27 GiB peak (estimated) of a 18.40 GiB" in text
