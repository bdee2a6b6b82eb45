"""Coarse-to-fine renders: checkpoints, resume, interruption, contact sheet, colour modes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hires_nst.core import color
from hires_nst.engine.render import RenderJob, render
from hires_nst.errors import ConfigError, Interrupted
from hires_nst.events import StageStarted, Step
from hires_nst.io import images
from tests.helpers.paths import CONTENT
from tests.helpers.renders import interrupt_at, job


def started_stages(events) -> list[int]:
    return [e.stage for e in events if isinstance(e, StageStarted)]


def test_three_stage_render_writes_a_checkpoint_per_stage(tmp_path: Path) -> None:
    events = []
    result = render(job(tmp_path, small=False), events.append)
    work = tmp_path / "work"
    assert sorted(p.name for p in work.glob("stage-*.pt")) == ["stage-0.pt", "stage-1.pt", "stage-2.pt"]
    assert [images.load_image(work / f"stage-{i}.png").shape[:2] for i in range(3)] == [(48, 64), (96, 128), (192, 256)]
    assert started_stages(events) == [0, 1, 2]
    assert (result.width, result.height) == (256, 192)
    assert json.loads((work / "status.json").read_text())["state"] == "finished"


def test_resume_redoes_only_the_missing_stage_and_matches_the_uninterrupted_image(tmp_path: Path) -> None:
    first = render(job(tmp_path, small=False))
    uninterrupted = images.load_image(first.output)
    (tmp_path / "work" / "stage-2.pt").unlink()
    events = []
    resumed = render(RenderJob(**{**job(tmp_path, small=False).__dict__, "resume": True}), events.append)
    assert started_stages(events) == [2]
    assert resumed.stages_reused == 2
    assert np.abs(images.load_image(resumed.output) - uninterrupted).mean() < 1 / 255


def test_ctrl_c_keeps_finished_stages_and_says_how_to_resume(tmp_path: Path) -> None:
    def interrupt_in_stage_two(event) -> None:
        if isinstance(event, Step) and event.stage == 1 and event.iteration == 2:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted, match="during stage 2/3.*--resume"):
        render(job(tmp_path), interrupt_in_stage_two)
    status = json.loads((tmp_path / "work" / "status.json").read_text())
    assert status["state"] == "interrupted" and status["stage"] == 1
    assert not (tmp_path / "out.png").exists()

    with pytest.raises(ConfigError, match="unfinished render.*--resume"):
        render(job(tmp_path))  # forgetting --resume must not throw the finished stage away
    events = []
    render(RenderJob(**{**job(tmp_path).__dict__, "resume": True}), events.append)
    assert started_stages(events) == [1, 2]


def test_a_damaged_checkpoint_is_not_reused_and_its_stage_runs_again(tmp_path: Path) -> None:
    render(job(tmp_path, small=False))
    work = tmp_path / "work"
    data = (work / "stage-1.pt").read_bytes()
    (work / "stage-1.pt").write_bytes(data[: len(data) // 2])  # a truncated file (a bad disk, a copy cut short)
    for name in ("stage-2.pt", "stage-2.json"):
        (work / name).unlink()
    events = []
    resumed = render(RenderJob(**{**job(tmp_path, small=False).__dict__, "resume": True}), events.append)
    assert started_stages(events) == [1, 2] and resumed.stages_reused == 1
    assert any("stage-1.pt" in getattr(e, "text", "") and "damaged" in e.text for e in events)


def test_resume_with_other_settings_is_refused_with_the_difference(tmp_path: Path) -> None:
    render(job(tmp_path))
    changed = job(tmp_path, loss={"style_weight": 3.0})
    with pytest.raises(ConfigError, match="style_weight was 15.0, now 3.0"):
        render(RenderJob(**{**changed.__dict__, "resume": True}))


def test_a_larger_max_size_reuses_the_stages_of_a_smaller_render(tmp_path: Path) -> None:
    render(job(tmp_path, pyramid={"max_size": 64, "iterations": [8, 4]}))
    events = []
    bigger = job(tmp_path, pyramid={"max_size": 128, "iterations": [8, 4, 2]})
    render(RenderJob(**{**bigger.__dict__, "resume": True}), events.append)
    assert started_stages(events) == [2]


def test_no_keep_checkpoints_drops_the_stage_tensors_once_the_output_is_written(tmp_path: Path) -> None:
    render(job(tmp_path, output={"keep_checkpoints": False}))
    work = tmp_path / "work"
    assert (tmp_path / "out.png").is_file() and (work / "trace.csv").is_file()
    assert not list(work.glob("stage-*.pt"))
    assert sorted(p.name for p in work.glob("stage-*.png")) == ["stage-0.png", "stage-1.png", "stage-2.png"]
    assert json.loads((work / "status.json").read_text())["state"] == "finished"
    events = []  # nothing left to reuse: a resume renders every stage again, without complaint
    render(RenderJob(**{**job(tmp_path).__dict__, "resume": True}), events.append)
    assert started_stages(events) == [0, 1, 2]


def test_save_stages_writes_a_contact_sheet_beside_the_output(tmp_path: Path) -> None:
    render(job(tmp_path, output={"save_stages": True}, pyramid={"iterations": [2, 1, 1]}))
    sheet = images.load_image(tmp_path / "out-stages.png")
    assert sheet.shape[1] > 3 * 128  # three stages side by side, each 96 px tall (128 wide)


def test_save_every_writes_the_stage_in_progress(tmp_path: Path) -> None:
    render(job(tmp_path, output={"save_every": 2}, pyramid={"iterations": [4, 1, 1]}))
    assert images.load_image(tmp_path / "work" / "current.png").shape[:2] == (24, 32)
    assert not list((tmp_path / "work").glob("*partial*"))  # a finished stage replaces its progress


def test_the_stage_in_progress_is_saved_every_save_minutes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hires_nst.engine.resume as resume
    from hires_nst.config.schedule import Stage
    from hires_nst.io.checkpoints import WorkDir

    clock = {"now": 1000.0}
    monkeypatch.setattr(resume.time, "monotonic", lambda: clock["now"])
    stage = Stage(0, 8, 6, 100)
    workdir = WorkDir(tmp_path / "work")
    saves = resume.ProgressSaves(resume.Checkpointing(workdir, save_minutes=10, schedule=(stage,)), stage)
    image = torch.rand(1, 3, 6, 8)
    saved_at = []
    for iteration, minutes in ((1, 3), (2, 9.9), (3, 10.1), (4, 15), (5, 20.2), (100, 40)):
        clock["now"] = 1000.0 + minutes * 60
        saves(iteration, image, {})
        saved_at.append(workdir.progress(stage, (stage,)))
    assert saved_at == [0, 0, 3, 3, 5, 5]  # 10 minutes after the start, then after the last save; not at the end
    restored, _ = workdir.load_progress(0)
    assert torch.equal(restored, image)


def test_progress_saves_keep_one_complete_file_and_a_failed_save_lets_the_render_go_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hires_nst.engine.resume as resume
    from hires_nst.config.schedule import Stage
    from hires_nst.errors import OutputError
    from hires_nst.events import Message
    from hires_nst.io.checkpoints import WorkDir

    stage = Stage(0, 8, 6, 100)
    workdir = WorkDir(tmp_path / "work")
    messages = []
    saves = resume.ProgressSaves(resume.Checkpointing(workdir, save_every=10, schedule=(stage,)), stage,
                                  sink=messages.append)
    first, second = torch.rand(1, 3, 6, 8), torch.rand(1, 3, 6, 8)
    saves(10, first, {})
    saves(20, second, {})
    assert sorted(p.name for p in workdir.path.glob("stage-0.partial*")) == ["stage-0.partial-20.pt",
                                                                             "stage-0.partial.json"]
    assert workdir.progress(stage, (stage,)) == 20 and torch.equal(workdir.load_progress(0)[0], second)

    def full_disk(*args, **kwargs):
        raise OutputError("cannot write x: No space left on device")

    monkeypatch.setattr(workdir, "save_progress", full_disk)
    saves(30, torch.rand(1, 3, 6, 8), {})  # no exception: the render goes on
    assert isinstance(messages[-1], Message) and "No space left" in messages[-1].text
    assert workdir.progress(stage, (stage,)) == 20  # the last good save still stands

    saved = workdir.path / "stage-0.partial-20.pt"
    data = bytearray(saved.read_bytes())
    data[len(data) // 3] ^= 0xFF  # one flipped bit in the image data
    saved.write_bytes(bytes(data))
    assert workdir.progress(stage, (stage,)) == 0 and "stage-0.partial-20.pt" in workdir.damaged


@pytest.mark.parametrize("optimizer", ["lbfgs", "adam"])
def test_a_resume_goes_on_from_the_saved_progress_of_the_interrupted_stage(tmp_path: Path, optimizer: str) -> None:
    settings = {"output": {"save_every": 2}, "pyramid": {"iterations": [3, 6, 1]}, "optim": {"optimizer": optimizer}}
    # Stopped at iteration 5, between the saves of 4 and 6: iteration 5 is saved as it stops.
    with pytest.raises(Interrupted, match=r"during stage 2/3; 1 finished stage\(s\) and stage 2 at iteration 5/6 kept"):
        render(job(tmp_path, **settings), interrupt_at(1, 5))
    events = []
    resumed = render(RenderJob(**{**job(tmp_path, **settings).__dict__, "resume": True}), events.append)
    assert "resuming stage 2 at iteration 5 of 6" in [getattr(e, "text", "") for e in events]
    assert [(e.stage, e.iteration) for e in events if isinstance(e, Step)] == [(1, 6), (2, 1)]
    assert not list((tmp_path / "work").glob("*partial*"))
    trace = (tmp_path / "work" / "trace.csv").read_text().splitlines()[1:]
    assert [tuple(row.split(",")[i] for i in (0, 3)) for row in trace] == [
        ("0", "1"), ("0", "2"), ("0", "3"), *(("1", str(i)) for i in range(1, 7)), ("2", "1")]

    uninterrupted = render(job(tmp_path / "again", **settings))
    difference = np.abs(images.load_image(resumed.output) - images.load_image(uninterrupted.output)).mean()
    if optimizer == "adam":  # its moments were saved with the image: the same steps follow
        assert difference < 1e-6
    else:  # L-BFGS rebuilds its curvature history after the break: close, not equal
        # Mean |difference| measured 0.035 on the bundled 512 px pair (below 0.01 on 1024 px copies).
        assert difference < 0.05


def test_luminance_mode_keeps_the_content_chroma(tmp_path: Path) -> None:
    result = render(job(tmp_path, loss={"preserve_color": "luminance"}, pyramid={"iterations": [4, 2, 1]}))
    out = images.load_image(result.output)
    content = images.resize(images.load_image(CONTENT), out.shape[1], out.shape[0])
    chroma_error = np.abs(color.rgb_to_yiq(out)[..., 1:] - color.rgb_to_yiq(content)[..., 1:])
    assert chroma_error.mean() < 0.01  # 8-bit rounding and gamut clipping only


def test_a_full_disk_at_every_progress_save_is_said_once_per_change(tmp_path: Path) -> None:
    from hires_nst.config.schedule import Stage
    from hires_nst.engine.resume import Checkpointing, ProgressSaves
    from hires_nst.errors import DiskFullError
    from hires_nst.events import Message

    class Disk:  # the work dir's progress saves: full at iterations 2-5 and 8-9
        def save_progress(self, stage, schedule, iteration, image, state) -> None:
            if iteration in (2, 3, 4, 5, 8, 9):
                raise DiskFullError("cannot write stage-0.partial.pt: No space left on device")

        def save_current(self, image) -> None:
            pass

    said: list[str] = []
    stage = Stage(0, 8, 8, 20)
    saves = ProgressSaves(Checkpointing(Disk(), save_every=1, schedule=(stage,)), stage,  # type: ignore[arg-type]
                          sink=lambda e: said.append(e.text) if isinstance(e, Message) else None)
    for iteration in range(1, 10):  # a render that ends while the disk is still full
        saves(iteration, torch.zeros(1, 3, 8, 8), {})

    assert len(said) == 3, said
    assert "at iteration 2" in said[0] and "No space left" in said[0]
    assert "saved again at iteration 6" in said[1]
    assert "at iteration 8" in said[2]
