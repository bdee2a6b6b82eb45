"""Small real renders of the bundled pair: a job builder and a sink that interrupts a render."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from hires_nst.config.settings import resolve
from hires_nst.engine.render import RenderJob
from hires_nst.events import Step
from tests.helpers.paths import CONTENT, STYLE


def job(tmp_path: Path, name: str = "out.png", small: bool = True, **settings) -> RenderJob:
    """32 -> 64 -> 128 by default (fast); 64 -> 128 -> 256 with ``small=False``."""
    sizes = {"min_size": 32, "max_size": 128} if small else {"min_size": 64, "max_size": 256}
    layers = {"pyramid": {**sizes, "iterations": [8, 4, 2]},
              "output": {"work_dir": str(tmp_path / "work")}}
    for section, values in settings.items():
        layers.setdefault(section, {}).update(values)
    config = resolve(("test", layers))
    return RenderJob(CONTENT, (STYLE,), tmp_path / name, config)


def interrupt_at(stage: int, iteration: int):
    """A sink that stops the render (as Ctrl-C does) when ``stage`` reports ``iteration``."""
    def sink(event) -> None:
        if isinstance(event, Step) and event.stage == stage and event.iteration == iteration:
            raise KeyboardInterrupt
    return sink


def press_ctrl_c_at(stage: int, iteration: int):
    """A sink that presses Ctrl-C (a real SIGINT to this process) when ``stage`` reports ``iteration``."""
    def sink(event) -> None:
        if isinstance(event, Step) and event.stage == stage and event.iteration == iteration:
            os.kill(os.getpid(), signal.SIGINT)
    return sink
