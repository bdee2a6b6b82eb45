"""A stage never hands on an image worse than the best it reported (issue 25: L-BFGS climbed)."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest

from hires_nst.config.settings import resolve
from hires_nst.engine.render import RenderJob, render
from hires_nst.events import StageFinished, Step
from tests.helpers.paths import EXAMPLES


@pytest.mark.slow
def test_a_500_iteration_stage_that_climbed_hands_on_its_best(tmp_path: Path) -> None:
    # Tubingen x The Scream, one 96 px stage, the paper's loss (Gram, equal layers: conftest.py; the
    # w2 loss climbed harder, 2.16x, but costs 5x the time here), style weight 10, early stopping
    # off: the L-BFGS without a guard (main at 220b495) reached 1.0645 at iteration 481 and handed
    # on 1.0989, 87 of 500 steps uphill.
    config = resolve(("test", {"pyramid": {"min_size": 96, "max_size": 96, "iterations": [500]},
                               "loss": {"style_weight": 10.0}, "optim": {"tolerance": 0.0},
                               "device": {"precision": "fp32"}, "output": {"work_dir": str(tmp_path / "work")}}))
    events: list = []
    render(RenderJob(EXAMPLES / "tubingen.jpg", (EXAMPLES / "the_scream.jpg",), tmp_path / "out.png", config),
           events.append)
    reported = [e.losses["total"] for e in events if isinstance(e, Step)]
    (finished,) = [e for e in events if isinstance(e, StageFinished)]
    assert len(reported) == 500 and finished.iterations == 500
    assert all(b <= a for a, b in pairwise(reported))  # the reports follow the best point
    assert finished.losses["total"] <= min(reported) * (1 + 1e-5)
    assert finished.losses["total"] < 1.0989  # below what the unguarded optimiser handed on


def test_a_converged_stage_ends_early_and_says_so(tmp_path: Path) -> None:
    from hires_nst.events import Message

    # A loose tolerance over a short window: the stage ends long before its cap of 400.
    config = resolve(("test", {"pyramid": {"min_size": 32, "max_size": 32, "iterations": [400]},
                               "optim": {"tolerance": 0.05, "patience": 10}, "device": {"precision": "fp32"},
                               "output": {"work_dir": str(tmp_path / "work")}}))
    events: list = []
    render(RenderJob(EXAMPLES / "tubingen.jpg", (EXAMPLES / "starry_night.jpg",), tmp_path / "out.png", config),
           events.append)
    (finished,) = [e for e in events if isinstance(e, StageFinished)]
    steps = [e for e in events if isinstance(e, Step)]
    assert 10 < finished.iterations < 400 and steps[-1].iteration == finished.iterations
    assert any(isinstance(e, Message) and "converged after" in e.text for e in events)
