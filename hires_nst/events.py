"""Progress events: the engine's only way to talk to the outside world.

The engine calls ``sink(event)``; the CLI turns events into a rich display, tests collect them,
and ``null_sink`` drops them (``--quiet``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only in annotations: the command line loads this module without numpy
    import numpy as np


@dataclass(frozen=True)
class PlannedStage:
    width: int
    height: int
    iterations: int
    memory_bytes: int  # estimated peak of the stage (memmodel)
    tile: int | None = None  # tile side when tiled
    tiles: int = 1
    budget_bytes: int = 0  # what the tiling was planned to fit (0: not known)


@dataclass(frozen=True)
class Planned:
    """Emitted once before any work: the schedule, so a person sees what the night will cost."""

    stages: tuple[PlannedStage, ...]
    device: str
    weights: str
    work_dir: str = ""  # absolute: checkpoints, trace, status (what ``hires-nst watch`` reads)
    preview: str = ""  # absolute: the image in progress, refreshed at every ``Preview``


@dataclass(frozen=True)
class StageStarted:
    stage: int  # 0-based
    stages: int
    width: int
    height: int
    iterations: int
    done: int = 0  # iterations already done before a resume (the stage goes on from its saved progress)


@dataclass(frozen=True)
class Step:
    """Reported every ``--sync-every`` iterations (and at a stage's last): ``covered`` iterations
    since the previous report, each taking ``seconds`` on average."""

    stage: int
    iteration: int  # 1-based, within the stage
    iterations: int
    losses: dict[str, float]  # total, content, style, tv
    seconds: float  # wall time per iteration, averaged over the iterations this report covers
    peak_memory: int = 0  # bytes: CUDA peak allocated in this stage, or the process's peak RSS on the CPU
    covered: int = 1


@dataclass(frozen=True)
class StageFinished:
    stage: int
    width: int
    height: int
    seconds: float
    losses: dict[str, float] = field(default_factory=dict)
    iterations: int = 0  # iterations the stage ran (fewer than planned when it converged early)


@dataclass(frozen=True, eq=False)
class Snapshot:
    """The image being optimised (for ``--animate``): at a stage's start, every N iterations, at its end."""

    stage: int
    iteration: int  # 0: the stage's starting image
    image: np.ndarray  # (h, w, 3) float32 in [0, 1], downscaled to at most the requested frame size


@dataclass(frozen=True, eq=False)
class Preview:
    """The image in progress for a person to look at (``preview.jpg``, a notebook, the live page):
    at each stage's start and end and every few seconds between, shrunk on its device first."""

    stage: int
    iteration: int
    image: np.ndarray  # (h, w, 3) float32 in [0, 1], long side at most the preview size


@dataclass(frozen=True)
class Message:
    """Something a person should know that is not an error (a fallback taken, a file written)."""

    text: str


@dataclass(frozen=True)
class JobStarted:
    """A batch job begins (``index`` is 0-based among the jobs this run renders)."""

    name: str
    index: int
    total: int
    device: str = ""


@dataclass(frozen=True)
class JobFinished:
    name: str
    status: str  # finished | failed | interrupted
    seconds: float
    error: str = ""


Event = Planned | StageStarted | Step | StageFinished | Snapshot | Preview | Message | JobStarted | JobFinished
Sink = Callable[[Event], None]


def null_sink(event: Event) -> None:
    """Drop every event."""


def tee(*sinks: Sink) -> Sink:
    """One sink that hands every event to each of ``sinks`` in turn."""

    def sink(event: Event) -> None:
        for each in sinks:
            each(event)

    return sink
