"""What a render's progress says, as text: one formatter per event, and the one time-left estimate.

Every place that turns events into words reads them from here: the plain log lines
(``logprogress``), the terminal's bars (``cli.progress``), a batch job's log (``batch.job``);
the live page (``web.server``) asks ``WorkLeft`` for its time left too. So a stage, a step or a
job reads the same wherever a person sees it.

The bars count work as pixels x iterations (megapixel-iterations); work a resume reuses counts as done.
The time left prices each iteration with a cost model, seconds per iteration = fixed + per-pixel x
pixels: a line through the rates (mean seconds per iteration) of the stage in progress and of the
stage before it, as this run measured them. A GPU's small stages cost mostly the fixed part (launches,
host reads, the optimiser's bookkeeping): a stage of 4x the pixels was measured only 1.35x slower per
iteration, where pixels x iterations alone predicts 4x (issue 23: an ETA of 56 minutes after a 7-minute preview).
With one stage measured (the first, or the first after a resume), the rate is taken as proportional
to the pixels; a line that falls with the pixels (a first stage slowed by warm-up) is taken as flat,
one through a negative fixed cost as proportional.
"""

from __future__ import annotations

from collections.abc import Sequence

from hires_nst.events import JobFinished, JobStarted, Planned, PlannedStage, StageFinished, StageStarted, Step


def megapixel_iterations(width: int, height: int, iterations: int | float) -> float:
    """The unit of work of the progress bars."""
    return width * height * iterations / 1e6


class WorkLeft:
    """The work done and the time left of a render, from its plan and the steps so far."""

    def __init__(self, stages: Sequence[tuple[int, int, int]]) -> None:
        """``stages``: (width, height, iterations) of each planned stage."""
        self.work = [megapixel_iterations(w, h, n) for w, h, n in stages]
        self.sizes = [megapixel_iterations(w, h, 1) for w, h, _ in stages]
        self.iterations = [n for _, _, n in stages]
        self.measured: dict[int, tuple[float, int]] = {}  # stage -> (seconds, iterations) seen this run
        self.stage = -1  # the stage of the last report

    @classmethod
    def of(cls, plan: Planned) -> WorkLeft:
        return cls([(s.width, s.height, s.iterations) for s in plan.stages])

    def done(self, stage: int, iteration: int) -> float:
        """Megapixel-iterations done once ``stage`` reached ``iteration``: the stages before it count
        whole (run, reused or converged early)."""
        return sum(self.work[:stage]) + self.sizes[stage] * min(iteration, self.iterations[stage])

    def step(self, stage: int, iteration: int, iterations: int, seconds: float, covered: int) -> float | None:
        """Count a report; return the seconds left (None while nothing is measured)."""
        if stage >= len(self.sizes):
            return None
        spent, count = self.measured.get(stage, (0.0, 0))
        self.measured[stage] = (spent + seconds * covered, count + covered)
        self.stage = stage
        return self.seconds_left(stage, iteration, iterations)

    def rate(self, stage: int) -> float | None:
        """Mean seconds per iteration measured at ``stage`` (None: not measured)."""
        spent, count = self.measured.get(stage, (0.0, 0))
        return spent / count if count > 0 else None

    def cost(self) -> tuple[float, float] | None:
        """(fixed seconds, seconds per megapixel) of one iteration: the line through the measured
        rates of the stage in progress and the one before it (see the module's docstring)."""
        current = self.rate(self.stage)
        if current is None:
            return None
        pixels = self.sizes[self.stage]
        earlier = [k for k in self.measured if k < self.stage and self.sizes[k] != pixels]
        previous = self.rate(max(earlier)) if earlier else None
        if previous is None or pixels <= 0:
            return 0.0, current / pixels if pixels > 0 else 0.0
        per_pixel = (current - previous) / (pixels - self.sizes[max(earlier)])
        fixed = current - per_pixel * pixels
        if per_pixel <= 0:  # no cost growing with the pixels to be seen: each iteration as the current one
            return current, 0.0
        if fixed < 0:
            return 0.0, current / pixels
        return fixed, per_pixel

    def seconds_left(self, stage: int, iteration: int, iterations: int | None = None) -> float | None:
        """Seconds left after ``iteration`` of ``stage`` (of ``iterations``; the plan's when None):
        the stage's own rest at its measured rate, each later stage at the cost model's."""
        rest = self.stage_seconds(stage, iteration, self.iterations[stage] if iterations is None else iterations)
        cost = self.cost()
        if rest is None or cost is None:
            return None
        fixed, per_pixel = cost
        return rest + sum((fixed + per_pixel * self.sizes[k]) * self.iterations[k]
                          for k in range(stage + 1, len(self.sizes)))

    def stage_seconds(self, stage: int, iteration: int, iterations: int) -> float | None:
        """The seconds left in ``stage`` alone, at the rate measured there (None before it is)."""
        rate = self.rate(stage) if stage == self.stage else None
        return None if rate is None else rate * max(0, iterations - iteration)


def clock_text(seconds: float) -> str:
    """``3725`` -> ``1:02:05``; ``65`` -> ``1:05``."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


UNKNOWN_TIME = "-:--"  # a time left not measured yet


def time_text(seconds: float | None) -> str:
    return UNKNOWN_TIME if seconds is None else clock_text(seconds)


# --------------------------------------------------------------------------- one formatter per event


def device_text(plan: Planned) -> str:
    return f"device {plan.device}; weights {plan.weights}"


def plan_text(plan: Planned) -> str:
    """``Planned`` in one line: the device, the weights and every stage's size and iterations."""
    return (f"{device_text(plan)}; {len(plan.stages)} stage(s): "
            + ", ".join(f"{s.width}x{s.height} x{s.iterations}" for s in plan.stages))


def planned_stage_text(index: int, stage: PlannedStage) -> str:
    """One planned stage in full (the terminal lists them): its tiling and estimated memory."""
    tiling = f"{stage.tiles} tiles of {stage.tile} px" if stage.tile else "untiled"
    budget = f" of a {stage.budget_bytes / 2**30:.2f} GiB budget" if stage.budget_bytes else ""
    return (f"stage {index + 1}: {stage.width}x{stage.height}, {stage.iterations} iterations, {tiling}, "
            f"~{stage.memory_bytes / 2**30:.2f} GiB peak (estimated){budget}")


def plan_paths(plan: Planned) -> list[str]:
    """Where to look while it runs: the work dir and the image in progress, those the plan names."""
    return ([f"work dir: {plan.work_dir}"] if plan.work_dir else []) + (
        [f"image in progress: {plan.preview}"] if plan.preview else [])


def stage_text(stage: int, stages: int) -> str:
    """``stage 2/5`` (``stage 2/?`` while the count is not known); ``stage`` is 0-based."""
    return f"stage {stage + 1}/{stages or '?'}"


def stage_name(stage: int, stages: int, width: int, height: int) -> str:
    return f"{stage_text(stage, stages)} {width}x{height}"


def started_text(event: StageStarted) -> str:
    resumed = f", going on from iteration {event.done}" if event.done else ""
    return (f"{stage_name(event.stage, event.stages, event.width, event.height)}: started, "
            f"{event.iterations} iterations{resumed}")


def step_text(event: Step, seconds_left: float | None = None) -> str:
    """``it 11/20 loss 2.5 1.00 s/it`` and, when given, `` eta 0:49``."""
    eta = f" eta {clock_text(seconds_left)}" if seconds_left is not None else ""
    return (f"it {event.iteration}/{event.iterations} loss {event.losses.get('total', float('nan')):.4g} "
            f"{event.seconds:.2f} s/it{eta}")


def finished_text(event: StageFinished) -> str:
    """``finished in 20.0s, loss 2.5`` (the stage's name is the caller's: a bar already shows it)."""
    loss = f", loss {event.losses['total']:.4g}" if "total" in event.losses else ""
    return f"finished in {event.seconds:.1f}s{loss}"


def stage_finished_text(event: StageFinished, stages: int) -> str:
    return f"{stage_name(event.stage, stages, event.width, event.height)}: {finished_text(event)}"


def job_started_text(event: JobStarted) -> str:
    where = f" on {event.device}" if event.device and event.device != "auto" else ""
    return f"[{event.index + 1}/{event.total}] {event.name}{where}"


def job_finished_text(event: JobFinished) -> str:
    note = f": {event.error}" if event.error else ""
    return f"{event.name}: {event.status} in {event.seconds:.1f}s{note}"
