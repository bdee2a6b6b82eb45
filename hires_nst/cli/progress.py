"""Rich progress for the CLI: turns engine events into bars. The engine never imports this."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from hires_nst.events import Event, JobFinished, JobStarted, Message, Planned, StageFinished, StageStarted, Step


class ProgressDisplay:
    """An overall bar weighted by pixels x iterations, and a bar for the stage in progress."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=console, transient=False,
        )
        self.overall: TaskID = self.progress.add_task("total", total=None, info="")
        self.stage_task: TaskID | None = None
        self.pixels = 0
        self.work: list[float] = []  # megapixel-iterations of each planned stage

    def __enter__(self) -> ProgressDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        if isinstance(event, Planned):
            self._show_plan(event)
        elif isinstance(event, StageStarted):
            self.pixels = event.width * event.height
            self._rescope(event)
            label = f"stage {event.stage + 1}/{event.stages} {event.width}x{event.height}"
            self.stage_task = self.progress.add_task(label, total=event.iterations, completed=event.done, info="")
        elif isinstance(event, Step) and self.stage_task is not None:
            info = (f"it {event.iteration}/{event.iterations} loss {event.losses['total']:.4g} "
                    f"{event.seconds:.2f}s/it")
            self.progress.update(self.stage_task, completed=event.iteration, info=info)
            self.progress.advance(self.overall, self.pixels * event.covered / 1e6)
        elif isinstance(event, StageFinished) and self.stage_task is not None:
            ran: dict[str, Any] = {"total": event.iterations, "completed": event.iterations} if event.iterations else {}
            self.progress.update(self.stage_task, info=f"loss {event.losses.get('total', 0):.4g} "
                                                      f"done in {event.seconds:.1f}s", **ran)
        elif isinstance(event, Message):
            self.console.print(f"[yellow]{event.text}[/]")

    def _rescope(self, started: StageStarted) -> None:
        rescope(self.progress, self.overall, self.work, started)

    def _show_plan(self, plan: Planned) -> None:
        self.work = [s.width * s.height * s.iterations / 1e6 for s in plan.stages]
        self.progress.update(self.overall, total=sum(self.work))
        self.console.print(f"device {plan.device}; weights {plan.weights}")
        for i, s in enumerate(plan.stages):
            tiling = f"{s.tiles} tiles of {s.tile} px" if s.tile else "untiled"
            budget = f" of a {s.budget_bytes / 2**30:.2f} GiB budget" if s.budget_bytes else ""
            self.console.print(f"  stage {i + 1}: {s.width}x{s.height}, {s.iterations} iterations, {tiling}, "
                               f"~{s.memory_bytes / 2**30:.2f} GiB peak (estimated){budget}", markup=False)
        if plan.work_dir:
            self.console.print(f"work dir: {plan.work_dir}", markup=False, soft_wrap=True)
        if plan.preview:
            self.console.print(f"image in progress: {plan.preview}", markup=False, soft_wrap=True)


def rescope(progress: Progress, task: TaskID, work: list[float], started: StageStarted) -> None:
    """Make ``task`` count only the work this run does: the stages and iterations that a resume
    reuses are left out of its total, so that they neither hold the bar short of 100% nor fool its
    ETA. ``work`` holds the planned megapixel-iterations per stage."""
    if len(work) != started.stages:
        return
    completed = next(t.completed for t in progress.tasks if t.id == task)
    left = sum(work[started.stage:]) - started.width * started.height * started.done / 1e6
    progress.update(task, total=completed + left)


class BatchDisplay:
    """A line per job as it starts and ends, and one bar for the job in progress."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self.task: TaskID | None = None
        self.name = ""
        self.pixels = 0
        self.work: list[float] = []

    def __enter__(self) -> BatchDisplay:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, event: Event) -> None:
        if isinstance(event, JobStarted):
            self.name = event.name
            where = f" on {event.device}" if event.device and event.device != "auto" else ""
            self.console.print(f"[{event.index + 1}/{event.total}] {event.name}{where}", markup=False)
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(event.name, total=None)
        elif isinstance(event, Planned) and self.task is not None:
            self.work = [s.width * s.height * s.iterations / 1e6 for s in event.stages]
            self.progress.update(self.task, total=sum(self.work))
        elif isinstance(event, StageStarted) and self.task is not None:
            self.pixels = event.width * event.height
            rescope(self.progress, self.task, self.work, event)
            self.progress.update(self.task, description=f"{self.name} stage {event.stage + 1}/{event.stages} "
                                                        f"{event.width}x{event.height}")
        elif isinstance(event, Step) and self.task is not None:
            self.progress.advance(self.task, self.pixels * event.covered / 1e6)
        elif isinstance(event, JobFinished):
            colour = {"finished": "green", "failed": "red"}.get(event.status, "yellow")
            note = f": {event.error}" if event.error else ""
            self.console.print(f"  [{colour}]{event.status}[/] {escape(event.name)} in {event.seconds:.1f}s"
                               f"{escape(note)}", soft_wrap=True)
        elif isinstance(event, Message):
            self.console.print(f"[yellow]{escape(event.text)}[/]")
