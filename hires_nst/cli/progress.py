"""Rich progress for the CLI: turns engine events into bars. The engine never imports this.

The words and the time left are ``progresstext``'s: the bars say what the log lines say.
"""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from hires_nst.events import Event, JobFinished, JobStarted, Message, Planned, StageFinished, StageStarted, Step
from hires_nst.io.progresstext import (
    UNKNOWN_TIME,
    WorkLeft,
    device_text,
    finished_text,
    job_finished_text,
    job_started_text,
    plan_paths,
    planned_stage_text,
    stage_name,
    step_text,
    time_text,
)


class ProgressDisplay:
    """An overall bar weighted by pixels x iterations (what a resume reuses counted as done), and a
    bar for the stage in progress; each with the time it has left (``WorkLeft``, as the log lines)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta {task.fields[eta]}"),
            console=console, transient=False,
        )
        self.overall: TaskID = self.progress.add_task("total", total=None, info="", eta=UNKNOWN_TIME)
        self.stage_task: TaskID | None = None
        self.left: WorkLeft | None = None

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        if isinstance(event, Planned):
            self._show_plan(event)
        elif isinstance(event, StageStarted):
            count_done(self.progress, self.overall, self.left, event.stage, event.done)
            label = stage_name(event.stage, event.stages, event.width, event.height)
            self.stage_task = self.progress.add_task(label, total=event.iterations, completed=event.done, info="",
                                                     eta=UNKNOWN_TIME)
        elif isinstance(event, Step) and self.stage_task is not None:
            self._step(event, self.stage_task)
        elif isinstance(event, StageFinished) and self.stage_task is not None:
            if event.iterations:  # it ran this many: fewer than planned when it converged early
                self.progress.update(self.stage_task, total=event.iterations, completed=event.iterations)
            self.progress.update(self.stage_task, info=finished_text(event), eta=time_text(0.0))
            count_done(self.progress, self.overall, self.left, event.stage + 1, 0)
        elif isinstance(event, Message):
            self.console.print(f"[yellow]{escape(event.text)}[/]")

    def _step(self, step: Step, stage_task: TaskID) -> None:
        left = self.left.step(step.stage, step.iteration, step.iterations, step.seconds, step.covered) \
            if self.left else None
        stage_left = self.left.stage_seconds(step.stage, step.iteration, step.iterations) if self.left else None
        self.progress.update(stage_task, completed=step.iteration, info=step_text(step), eta=time_text(stage_left))
        self.progress.update(self.overall, eta=time_text(left))
        count_done(self.progress, self.overall, self.left, step.stage, step.iteration)

    def _show_plan(self, plan: Planned) -> None:
        self.left = WorkLeft.of(plan)
        self.progress.update(self.overall, total=sum(self.left.work))
        self.console.print(device_text(plan), markup=False)
        for i, s in enumerate(plan.stages):
            self.console.print(f"  {planned_stage_text(i, s)}", markup=False)
        for line in plan_paths(plan):
            self.console.print(line, markup=False, soft_wrap=True)


def count_done(progress: Progress, task: TaskID, left: WorkLeft | None, stage: int, iteration: int) -> None:
    """Set ``task`` to the work done once ``stage`` reached ``iteration``: what a resume reuses counts
    as done (the bar then agrees with the stage's), a stage that converged early counts whole."""
    if left is not None and stage <= len(left.work):
        done = sum(left.work) if stage == len(left.work) else left.done(stage, iteration)
        progress.update(task, completed=done)


class BatchDisplay:
    """A line per job as it starts and ends, and one bar for the job in progress."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.task: TaskID | None = None
        self.name = ""
        self.left: WorkLeft | None = None

    def __enter__(self) -> BatchDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        if isinstance(event, JobStarted):
            self.name = event.name
            self.console.print(job_started_text(event), markup=False)
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(event.name, total=None)
        elif isinstance(event, Planned) and self.task is not None:
            self.left = WorkLeft.of(event)
            self.progress.update(self.task, total=sum(self.left.work))
        elif isinstance(event, StageStarted) and self.task is not None:
            count_done(self.progress, self.task, self.left, event.stage, event.done)
            label = stage_name(event.stage, event.stages, event.width, event.height)
            self.progress.update(self.task, description=f"{self.name} {label}")
        elif isinstance(event, Step) and self.task is not None:
            count_done(self.progress, self.task, self.left, event.stage, event.iteration)
        elif isinstance(event, JobFinished):
            colour = {"finished": "green", "failed": "red"}.get(event.status, "yellow")
            self.console.print(Text(f"  {job_finished_text(event)}", style=colour), soft_wrap=True)
        elif isinstance(event, Message):
            self.console.print(f"[yellow]{escape(event.text)}[/]")
