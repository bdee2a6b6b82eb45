"""The pyramid's stage schedule: pure arithmetic on sizes and iteration counts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from hires_nst.errors import ConfigError

DEFAULT_MIN_SIZE = 128  # crowsonkb's too: the painting's motifs are laid out where conv5_1 sees the whole image
# Caps per stage (coarse to fine); a stage ends sooner once it converged (--tolerance). Set from
# benchmarks/convergence.py on the bundled pair (docs/experiments.md, "The default render"): the
# scores stop moving after ~150 iterations at 128 px, ~100-150 at 256 and ~50-100 at 512.
DEFAULT_ITERATIONS = (300, 150, 80, 50)
SINGLE_STAGE_ITERATIONS = 500
MAX_STAGES = 32  # far beyond any useful pyramid (256 -> 7016 px is 6 stages at the default factor 2)


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
    if not 1 < factor < math.inf:  # also refuses nan
        raise ConfigError(f"--scale-factor must be a finite number > 1, got {factor}")


def stage_long_sides(min_size: int, max_size: int, factor: float) -> list[int]:
    """Long sides from ``min_size`` up by ``factor``, the last exactly ``max_size``.

    An intermediate stage closer than sqrt(factor) to the final size is dropped: a stage that
    barely grows the image costs a full pass and adds nothing.
    """
    check_pyramid(min_size, max_size, factor)
    sides: list[int] = []
    side = float(min_size)
    while side * math.sqrt(factor) < max_size - 1e-9:
        if (not sides or round(side) > sides[-1]) and round(side) < max_size:  # every stage grows
            sides.append(round(side))
        side *= factor
    if len(sides) + 1 > MAX_STAGES:
        needed = (max_size / min_size) ** (1 / (MAX_STAGES - 1))
        raise ConfigError(f"--scale-factor {factor:g} makes {len(sides) + 1} stages from {min_size} to {max_size} px; "
                          f"at most {MAX_STAGES} are allowed: use a --scale-factor of "
                          f"{math.ceil(needed * 100) / 100:g} or more")
    return sides + [max_size]


def shortest_long_side(width: int, height: int, min_short: int) -> int:
    """The smallest long side at which a ``width`` x ``height`` image keeps a short side of at least
    ``min_short`` px (a panorama's first stage must be longer than --min-size)."""
    long_side = max(1, math.ceil(min_short * max(width, height) / min(width, height)) - 1)
    while min(fit_long_side(width, height, long_side)) < min_short:
        long_side += 1
    return long_side


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
                  iterations: Sequence[int] = (), fit_iterations: bool = False, min_short: int = 1) -> list[Stage]:
    """Stages for a content image of ``width`` x ``height``; ``min_size`` 0 means the default.

    No stage's short side is under ``min_short`` (the network's minimum): a panorama's first stage
    is raised past ``min_size`` until it is tall enough; an output too thin itself is an error."""
    if min_size == 0:
        min_size = min(DEFAULT_MIN_SIZE, max_size)
    needed = shortest_long_side(width, height, min_short)
    if needed > max_size:
        out_w, out_h = fit_long_side(width, height, max_size)
        raise ConfigError(f"the output would be {out_w}x{out_h} px, too thin for the network: its short side must be "
                          f"at least {min_short} px; use --max-size {needed} or more, or crop the image")
    sides = stage_long_sides(max(min_size, needed), max_size, factor)
    counts = stage_iterations(len(sides), iterations, fit=fit_iterations)
    return [Stage(i, *fit_long_side(width, height, side), counts[i]) for i, side in enumerate(sides)]
