"""Progress as plain lines, for a log file (``2> log``, ``nohup``, a batch on a server).

Rich's bars draw nothing until the end when stderr is not a terminal, so a 48-minute render left
an empty log. This sink writes a line when a stage starts and ends and, in between, one every
``every`` seconds: stage, iteration, loss, seconds per iteration and the time left. The time left
counts work as pixels x iterations (a 2x larger stage costs 4x per iteration) at the rate the
current stage runs at.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hires_nst.events import Event, JobFinished, JobStarted, Message, Planned, StageFinished, StageStarted, Step

LOG_SECONDS = 30.0


def clock_text(seconds: float) -> str:
    """``3725`` -> ``1:02:05``; ``65`` -> ``1:05``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class WorkLeft:
    """The time a render has left, from its plan and the steps so far (also used by the live page)."""

    def __init__(self, stages: list[tuple[int, int, int]]) -> None:
        """``stages``: (width, height, iterations) of each planned stage."""
        self.work = [w * h * n / 1e6 for w, h, n in stages]  # megapixel-iterations
        self.sizes = [w * h / 1e6 for w, h, _ in stages]
        self.seconds = 0.0  # spent in the current stage, over ``done`` megapixel-iterations
        self.done = 0.0
        self.stage = -1

    def step(self, stage: int, iteration: int, iterations: int, seconds: float, covered: int) -> float | None:
        """Count a report; return the seconds left (None while nothing is measured)."""
        if stage >= len(self.sizes):
            return None
        if stage != self.stage:
            self.stage, self.seconds, self.done = stage, 0.0, 0.0
        self.seconds += seconds * covered
        self.done += self.sizes[stage] * covered
        if self.done <= 0:
            return None
        left = self.sizes[stage] * max(0, iterations - iteration) + sum(self.work[stage + 1:])
        return left * self.seconds / self.done


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
            self._plan(event)
        elif isinstance(event, StageStarted):
            self.stages = event.stages
            resumed = f", going on from iteration {event.done}" if event.done else ""
            self.say(f"stage {event.stage + 1}/{event.stages} {event.width}x{event.height}: started, "
                     f"{event.iterations} iterations{resumed}")
            self.first_step, self.last = True, self.clock()
        elif isinstance(event, Step):
            self._step(event)
        elif isinstance(event, StageFinished):
            loss = f", loss {event.losses['total']:.4g}" if "total" in event.losses else ""
            self.say(f"stage {event.stage + 1}/{self.stages or '?'} {event.width}x{event.height}: finished in "
                     f"{event.seconds:.1f}s{loss}")
        elif isinstance(event, Message):
            self.say(event.text)
        elif isinstance(event, JobStarted):
            where = f" on {event.device}" if event.device and event.device != "auto" else ""
            self.write(f"{time.strftime('%H:%M:%S')} [{event.index + 1}/{event.total}] {event.name}{where}")
            self.prefix = f"{event.name}: "
        elif isinstance(event, JobFinished):  # by name: parallel workers finish in any order
            note = f": {event.error}" if event.error else ""
            self.write(f"{time.strftime('%H:%M:%S')} {event.name}: {event.status} in {event.seconds:.1f}s{note}")

    def _plan(self, plan: Planned) -> None:
        self.left = WorkLeft([(s.width, s.height, s.iterations) for s in plan.stages])
        self.say(f"device {plan.device}; weights {plan.weights}; {len(plan.stages)} stage(s): "
                 + ", ".join(f"{s.width}x{s.height} x{s.iterations}" for s in plan.stages))
        if plan.work_dir:
            self.say(f"work dir: {plan.work_dir}")
        if plan.preview:
            self.say(f"image in progress: {plan.preview}")

    def _step(self, step: Step) -> None:
        left = self.left.step(step.stage, step.iteration, step.iterations, step.seconds, step.covered) \
            if self.left else None
        now = self.clock()
        if not self.first_step and now - self.last < self.every:
            return
        self.first_step, self.last = False, now
        eta = f" eta {clock_text(left)}" if left is not None else ""
        self.say(f"stage {step.stage + 1}/{self.stages or '?'} it {step.iteration}/{step.iterations} "
                 f"loss {step.losses.get('total', float('nan')):.4g} {step.seconds:.2f} s/it{eta}")
