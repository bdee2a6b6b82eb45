"""The pyramid's stage schedule: pure arithmetic on sizes and iteration counts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from hires_nst.errors import ConfigError

DEFAULT_MIN_SIZE = 256
# Most iterations where pixels are cheap: as the multires recipes of neural-style (500, 200, 100, 50).
DEFAULT_ITERATIONS = (500, 200, 100, 50)
SINGLE_STAGE_ITERATIONS = 500


@dataclass(frozen=True)
class Stage:
    index: int
    width: int
    height: int
    iterations: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def long_side(self) -> int:
        return max(self.width, self.height)


def fit_long_side(width: int, height: int, long_side: int) -> tuple[int, int]:
    """The (width, height) with the same aspect ratio whose longer side is ``long_side``."""
    scale = long_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def check_pyramid(min_size: int, max_size: int, factor: float) -> None:
    """The one check of the pyramid's sizes: by the config (--max-size) and by the schedule (the
    size actually rendered, which --print-size may set). ``min_size`` 0 means the default."""
    if min_size > max_size:
        raise ConfigError(f"--min-size {min_size} is larger than --max-size {max_size}")
    if factor <= 1:
        raise ConfigError(f"--scale-factor must be > 1, got {factor}")


def stage_long_sides(min_size: int, max_size: int, factor: float) -> list[int]:
    """Long sides from ``min_size`` up by ``factor``, the last exactly ``max_size``.

    An intermediate stage closer than sqrt(factor) to the final size is dropped: a stage that
    barely grows the image costs a full pass and adds nothing.
    """
    check_pyramid(min_size, max_size, factor)
    sides = []
    side = float(min_size)
    while side * math.sqrt(factor) < max_size - 1e-9:
        sides.append(round(side))
        side *= factor
    return sides + [max_size]


def stage_iterations(stages: int, iterations: Sequence[int], *, fit: bool = False) -> list[int]:
    """Iterations per stage: one number for all, one per stage, or the default table.

    A list of another length is an error, unless ``fit``: then it is read coarse to fine, the
    stages past its end repeat its last value and a shorter pyramid takes its first values (so a
    preset's list still works when the command line changes the output size).
    """
    if not iterations:
        if stages == 1:
            return [SINGLE_STAGE_ITERATIONS]
        return [DEFAULT_ITERATIONS[min(i, len(DEFAULT_ITERATIONS) - 1)] for i in range(stages)]
    if len(iterations) == 1:
        return [iterations[0]] * stages
    if len(iterations) != stages and not fit:
        raise ConfigError(f"--iterations lists {len(iterations)} values but the pyramid has {stages} stages "
                          "(give one number, one per stage, or add --fit-iterations)")
    return [iterations[min(i, len(iterations) - 1)] for i in range(stages)]


def make_schedule(width: int, height: int, *, max_size: int, min_size: int = 0, factor: float = 2.0,
                  iterations: Sequence[int] = (), fit_iterations: bool = False) -> list[Stage]:
    """Stages for a content image of ``width`` x ``height``; ``min_size`` 0 means the default."""
    if min_size == 0:
        min_size = min(DEFAULT_MIN_SIZE, max_size)
    sides = stage_long_sides(min_size, max_size, factor)
    counts = stage_iterations(len(sides), iterations, fit=fit_iterations)
    return [Stage(i, *fit_long_side(width, height, side), counts[i]) for i, side in enumerate(sides)]
