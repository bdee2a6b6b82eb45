"""Ctrl-C and resume: the iteration a render stopped at is saved with its optimiser state, the image
so far is left beside the output (never under its name), and a resume goes on from there."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hires_nst.engine.render import RenderJob, render
from hires_nst.engine.resume import partial_record
from hires_nst.errors import Interrupted, OutputError
from hires_nst.events import Message, StageStarted, Step
from hires_nst.io import images
from tests.helpers.paths import CONTENT, STYLE
from tests.helpers.renders import interrupt_at, job, press_ctrl_c_at

ADAM = {"pyramid": {"iterations": [3, 6, 1]}, "optim": {"optimizer": "adam"}}


def resumed(tmp_path: Path, **settings) -> RenderJob:
    return RenderJob(**{**job(tmp_path, **settings).__dict__, "resume": True})


def test_ctrl_c_saves_the_iteration_it_stopped_at_and_the_resume_ends_as_an_uninterrupted_render(
        tmp_path: Path) -> None:
    # No periodic saves: what a resume finds is what Ctrl-C saved.
    with pytest.raises(Interrupted) as stopped:
        render(job(tmp_path, **ADAM), press_ctrl_c_at(1, 3))
    assert "during stage 2/3; 1 finished stage(s) and stage 2 at iteration 3/6 kept" in str(stopped.value)
    assert stopped.value.advice == "run the same command with --resume to continue"
    work = tmp_path / "work"
    record = json.loads((work / "stage-1.partial.json").read_text())
    assert record["iteration"] == 3
    saved = torch.load(work / record["file"], weights_only=True)
    assert saved["image"].shape == saved["exp_avg"].shape == saved["exp_avg_sq"].shape == (1, 3, 48, 64)
    assert int(saved["step"]) == 3  # Adam's own count: three steps of this stage

    # The image so far, beside the output and marked as such; the output itself is not written.
    partial = tmp_path / "out.partial.png"
    assert not (tmp_path / "out.png").exists()
    assert images.load_image(partial).shape == (48, 64, 3)
    assert partial_record(partial) == {"partial": True, "output": str(tmp_path / "out.png"), "stage": 2, "stages": 3,
                                       "iteration": 3, "iterations": 6, "work_dir": str(work)}
    assert f"the image so far: {partial} (stage 2/3, 64x48, iteration 3/6)" in str(stopped.value)

    events: list = []
    result = render(resumed(tmp_path, **ADAM), events.append)
    assert [(e.stage, e.iteration) for e in events if isinstance(e, Step)] == [(1, 4), (1, 5), (1, 6), (2, 1)]
    assert not partial.exists()  # the finished output replaces it
    whole = render(job(tmp_path / "whole", **ADAM))
    # Image and Adam's whole state were saved: the same steps follow, to the bit.
    assert np.array_equal(images.load_image(result.output), images.load_image(whole.output))


def test_ctrl_c_between_saves_loses_no_iteration_of_lbfgs(tmp_path: Path) -> None:
    settings = {"pyramid": {"iterations": [3, 6, 1]}, "output": {"save_every": 4}}
    with pytest.raises(Interrupted, match=r"stage 2 at iteration 5/6 kept"):
        render(job(tmp_path, **settings), interrupt_at(1, 5))  # KeyboardInterrupt raised by a display
    events: list = []
    render(resumed(tmp_path, **settings), events.append)
    assert [(e.stage, e.iteration) for e in events if isinstance(e, Step)] == [(1, 6), (2, 1)]


def test_the_image_so_far_never_replaces_a_file_of_the_users(tmp_path: Path) -> None:
    partial = tmp_path / "out.partial.png"
    images.save_image(partial, np.full((8, 8, 3), 0.25, np.float32))  # the user's, by chance so named
    mine = partial.read_bytes()
    events: list = []

    def sink(event) -> None:
        events.append(event)
        press_ctrl_c_at(0, 2)(event)

    with pytest.raises(Interrupted) as stopped:
        render(job(tmp_path, **ADAM), sink)
    assert partial.read_bytes() == mine and "the image so far" not in str(stopped.value)
    assert any(isinstance(e, Message) and "is not an image hires-nst wrote: left as it is" in e.text for e in events)
    render(resumed(tmp_path, **ADAM))
    assert partial.read_bytes() == mine  # nor does the finished render remove it


def test_the_image_so_far_may_not_overwrite_an_input(tmp_path: Path) -> None:
    content = tmp_path / "out.partial.png"
    shutil.copy(CONTENT, content)
    with pytest.raises(OutputError, match="partial image .*out.partial.png would overwrite the content image"):
        render(RenderJob(content, (STYLE,), tmp_path / "out.png", job(tmp_path).config))


def notes(events: list) -> list[str]:
    return [e.text for e in events if isinstance(e, Message)]


def started(events: list) -> list[int]:
    return [e.stage for e in events if isinstance(e, StageStarted)]


def test_the_same_render_run_again_reuses_its_finished_stages_and_says_what_restart_does(tmp_path: Path) -> None:
    settings = {"pyramid": {"iterations": [3, 2, 1]}}
    first = render(job(tmp_path, **settings))
    events: list = []
    again = render(job(tmp_path, **settings), events.append)  # the same command, no flag
    assert started(events) == [] and again.stages_reused == 3
    assert (f"{first.output} was rendered before with the same inputs and settings: its 3 finished stages in "
            f"{tmp_path / 'work'} are written out again, nothing is rendered; --restart renders it again from the "
            "start") in notes(events)
    assert np.array_equal(images.load_image(again.output), images.load_image(first.output))

    events = []
    render(RenderJob(**{**job(tmp_path, **settings).__dict__, "restart": True}), events.append)
    assert started(events) == [0, 1, 2]
    assert f"{first.output} exists: this render replaces it when it finishes" in notes(events)


def test_a_finished_render_with_other_settings_is_replaced_and_the_message_says_why(tmp_path: Path) -> None:
    render(job(tmp_path, pyramid={"iterations": [3, 2, 1]}))
    events: list = []
    render(job(tmp_path, pyramid={"iterations": [3, 2, 1]}, loss={"style_weight": 123.0}), events.append)
    assert started(events) == [0, 1, 2]
    [note] = [n for n in notes(events) if "finished render" in n]
    assert note.startswith(f"the finished render in {tmp_path / 'work'} is not reused (other inputs or settings: "
                           "settings.loss.style_weight was ")
    assert note.endswith(f"now 123.0): this render starts from the beginning; {tmp_path / 'out.png'} is replaced "
                         "when it finishes")


def test_a_larger_render_into_the_same_output_reuses_the_stages_that_fit(tmp_path: Path) -> None:
    render(job(tmp_path, pyramid={"max_size": 64, "iterations": [3, 2]}))
    events: list = []
    render(job(tmp_path, pyramid={"iterations": [3, 2, 1]}), events.append)  # up to 128 px now
    assert started(events) == [2]
    assert any(n.startswith(f"reusing 2 of 3 stages from the finished render in {tmp_path / 'work'}")
               and n.endswith("--restart renders every stage again") for n in notes(events))


def test_a_finished_render_whose_checkpoints_were_dropped_runs_again_and_says_so(tmp_path: Path) -> None:
    settings = {"pyramid": {"iterations": [2, 1, 1]}, "output": {"keep_checkpoints": False}}
    render(job(tmp_path, **settings))
    events: list = []
    render(job(tmp_path, **settings), events.append)
    assert started(events) == [0, 1, 2]
    assert (f"the finished render in {tmp_path / 'work'} is not reused (its stage checkpoints were not kept: "
            f"--no-keep-checkpoints): this render starts from the beginning; {tmp_path / 'out.png'} is replaced when "
            "it finishes") in notes(events)
