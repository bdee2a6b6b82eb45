"""Progress in a log file: a line per stage start and end and one every N seconds between, with
the work dir and the image in progress named when the render starts."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from hires_nst.events import Message, Planned, PlannedStage, StageFinished, StageStarted, Step
from hires_nst.io.logprogress import LogProgress, WorkLeft, clock_text
from tests.helpers.paths import EXAMPLES

LOSSES = {"total": 2.5, "content": 1.0, "style": 0.15, "tv": 0.0}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_at_stage_start_and_end_and_every_n_seconds_between() -> None:
    lines: list[str] = []
    clock = Clock()
    log = LogProgress(lines.append, every=10, clock=clock)
    log(Planned((PlannedStage(100, 100, 20, 0), PlannedStage(200, 200, 10, 0)), "cpu", "original",
                "/w/out.work", "/w/out.work/preview.jpg"))
    log(StageStarted(0, 2, 100, 100, 20))
    for iteration in range(1, 21):
        clock.now += 1.0  # one second per iteration
        log(Step(0, iteration, 20, LOSSES, 1.0))
    log(StageFinished(0, 100, 100, 20.0, LOSSES))
    log(Message("note"))
    text = [line.split(" ", 1)[1] for line in lines]  # without the time of day
    assert "work dir: /w/out.work" in text
    assert "image in progress: /w/out.work/preview.jpg" in text
    assert "stage 1/2 100x100: started, 20 iterations" in text
    steps = [line for line in text if " it " in line]
    # The first report of the stage, then one per 10 seconds.
    assert [s.split(" loss")[0] for s in steps] == ["stage 1/2 it 1/20", "stage 1/2 it 11/20"]
    # 9 iterations of 0.01 MP left in stage 1 plus 10 of 0.04 MP in stage 2, at 100 s/MP: 49 s.
    assert steps[1].endswith("loss 2.5 1.00 s/it eta 0:49")
    assert text[-2:] == ["stage 1/2 100x100: finished in 20.0s, loss 2.5", "note"]


def test_work_left_counts_pixels_times_iterations_at_the_current_rate() -> None:
    left = WorkLeft([(1000, 1000, 10), (2000, 1000, 5)])
    assert left.step(0, 5, 10, 2.0, 5) == (5 * 1 + 5 * 2) * 2.0
    assert left.step(1, 1, 5, 3.0, 1) == 4 * 2 * 1.5  # the new stage's own rate: 3 s per 2 MP
    assert clock_text(3725) == "1:02:05" and clock_text(65) == "1:05"


def test_a_render_with_stderr_to_a_file_writes_progress_lines_while_it_runs(tmp_path: Path) -> None:
    log = tmp_path / "log"
    command = [sys.executable, "-m", "hires_nst", "render", str(EXAMPLES / "tubingen.jpg"),
               str(EXAMPLES / "starry_night.jpg"), "-o", str(tmp_path / "out.png"), "--max-size", "64",
               "--min-size", "32", "--iterations", "200,30", "--log-every", "0.2", "--tolerance", "0",
               "--work-dir", str(tmp_path / "work")]
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stderr=handle, stdout=subprocess.DEVNULL, cwd=tmp_path)
    seen_while_running = ""
    try:
        while process.poll() is None:
            text = log.read_text()
            if text.count(" it ") >= 2:  # the stage's first report and a timed one
                seen_while_running = text
                break
            time.sleep(0.05)
    finally:
        process.terminate()  # as a scheduler would: the render stops cleanly (tested elsewhere)
        process.wait(timeout=120)
    assert seen_while_running, f"no progress line before the render ended:\n{log.read_text()}"
    assert f"work dir: {tmp_path / 'work'}" in seen_while_running
    assert f"image in progress: {tmp_path / 'work' / 'preview.jpg'}" in seen_while_running
    assert "stage 1/2 32x24: started, 200 iterations" in seen_while_running
    assert "stage 1/2 it " in seen_while_running and " s/it eta " in seen_while_running
    assert (tmp_path / "work" / "preview.jpg").is_file()  # written when the stage started


def test_batch_lines_name_their_job() -> None:
    from hires_nst.events import JobFinished, JobStarted

    lines: list[str] = []
    log = LogProgress(lines.append, every=10, clock=Clock())
    log(JobStarted("harbour", 0, 2, "cuda:0"))
    log(StageStarted(0, 1, 64, 64, 5))
    log(JobStarted("tower", 1, 2, "cuda:1"))  # in parallel
    log(JobFinished("harbour", "finished", 12.0))
    text = [line.split(" ", 1)[1] for line in lines]
    assert text == ["[1/2] harbour on cuda:0", "harbour: stage 1/1 64x64: started, 5 iterations",
                    "[2/2] tower on cuda:1", "harbour: finished in 12.0s"]
