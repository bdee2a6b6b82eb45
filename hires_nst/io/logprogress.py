"""Progress as plain lines, for a log file (``2> log``, ``nohup``, a batch on a server).

Rich's bars draw nothing until the end when stderr is not a terminal, so a 48-minute render left
an empty log. This sink writes a line when a stage starts and ends and, in between, one every
``every`` seconds: stage, iteration, loss, seconds per iteration and the time left. The words and
the time left are ``progresstext``'s, shared with the bars and the job logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hires_nst.events import Event, JobFinished, JobStarted, Message, Planned, StageFinished, StageStarted, Step
from hires_nst.io.progresstext import (
    WorkLeft,
    clock_text,
    job_finished_text,
    job_started_text,
    plan_paths,
    plan_text,
    stage_finished_text,
    stage_text,
    started_text,
    step_text,
)

__all__ = ["LOG_SECONDS", "LogProgress", "WorkLeft", "clock_text"]

LOG_SECONDS = 30.0


class LogProgress:
    """An event sink writing plain progress lines through ``write`` (one call per line)."""

    def __init__(self, write: Callable[[str], None], every: float = LOG_SECONDS,
                 clock: Callable[[], float] = time.monotonic, prefix: str = "") -> None:
        self.write, self.every, self.clock, self.prefix = write, every, clock, prefix
        self.last = clock()
        self.left: WorkLeft | None = None
        self.stages = 0
        self.first_step = False

    def say(self, text: str) -> None:
        self.write(f"{time.strftime('%H:%M:%S')} {self.prefix}{text}")

    def __call__(self, event: Event) -> None:
        if isinstance(event, Planned):
            self.left = WorkLeft.of(event)
            for line in [plan_text(event), *plan_paths(event)]:
                self.say(line)
        elif isinstance(event, StageStarted):
            self.stages = event.stages
            self.say(started_text(event))
            self.first_step, self.last = True, self.clock()
        elif isinstance(event, Step):
            self._step(event)
        elif isinstance(event, StageFinished):
            self.say(stage_finished_text(event, self.stages))
        elif isinstance(event, Message):
            self.say(event.text)
        elif isinstance(event, JobStarted):
            self.write(f"{time.strftime('%H:%M:%S')} {job_started_text(event)}")
            self.prefix = f"{event.name}: "
        elif isinstance(event, JobFinished):  # by name: parallel workers finish in any order
            self.write(f"{time.strftime('%H:%M:%S')} {job_finished_text(event)}")

    def _step(self, step: Step) -> None:
        left = self.left.step(step.stage, step.iteration, step.iterations, step.seconds, step.covered) \
            if self.left else None
        now = self.clock()
        if not self.first_step and now - self.last < self.every:
            return
        self.first_step, self.last = False, now
        self.say(f"{stage_text(step.stage, self.stages)} {step_text(step, left)}")
