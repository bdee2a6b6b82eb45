"""Never destroy a user's file (issue 21): what a render may write, decided once before any work
(``writeplan.check_writes``): a work dir that is not ours, an output over an input, a name whose
temp file the filesystem cannot hold. Renders are tiny (32 -> 48 px, a few iterations)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hires_nst.cli.main import app
from hires_nst.config.settings import resolve
from hires_nst.engine.render import RenderJob, render
from hires_nst.errors import ConfigError, Interrupted, OutputError, classify
from hires_nst.events import StageStarted, Step
from hires_nst.io.writeplan import WORK_MARKER, WritePlan, check_writes
from tests.helpers.synthetic import write_image

runner = CliRunner()
SHALLOW = {"content_layers": ["conv2_1"], "style_layers": ["conv1_1", "conv2_1"]}
TINY = ["--min-size", "32", "--max-size", "48", "--iterations", "3,2", "--content-layers", "conv2_1",
        "--style-layers", "conv1_1,conv2_1", "-q"]


def _job(tmp_path: Path, work: Path | None = None, out: Path | None = None) -> RenderJob:
    """32 -> 48 px, 3 + 2 iterations, its work dir ``work`` (default tmp_path/work)."""
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    if not content.exists():
        write_image(content, 48, 40, 0)
        write_image(style, 40, 40, 1)
    config = resolve(("test", {"pyramid": {"min_size": 32, "max_size": 48, "iterations": [3, 2]},
                               "loss": dict(SHALLOW), "device": {"precision": "fp32"},
                               "output": {"work_dir": str(work or tmp_path / "work")}}))
    return RenderJob(content, (style,), out or tmp_path / "out.png", config)


def _with(job: RenderJob, **changes) -> RenderJob:
    return RenderJob(**{**job.__dict__, **changes})


def _stop_in_stage_two(event) -> None:
    if isinstance(event, Step) and event.stage == 1:
        raise KeyboardInterrupt


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _pictures(tmp_path: Path) -> Path:
    """A user's folder holding the photo, the painting and files that happen to carry our names."""
    pictures = tmp_path / "Pictures"
    pictures.mkdir()
    write_image(pictures / "photo.png", 48, 40, 0)
    write_image(pictures / "style.png", 40, 40, 1)
    for name in ("current.png", "stage-1.png", "preview.jpg"):
        write_image(pictures / name, 16, 16, 5)
    (pictures / "settings.json").write_text(json.dumps({"camera": "x100"}))
    (pictures / "status.json").write_text(json.dumps({"mood": "good"}))
    (pictures / "trace.csv").write_text("day,steps\n1,9000\n")
    (pictures / "lock").write_text("the combination is 1234\n")
    return pictures


# --- item 2: a work dir must be empty, absent, or ours ---------------------------------------------------


@pytest.mark.parametrize("flag", ["", "resume", "restart"])
def test_a_work_dir_holding_a_users_files_is_refused_before_any_work_and_left_as_it_was(
        tmp_path: Path, flag: str) -> None:
    pictures = _pictures(tmp_path)
    before = _snapshot(pictures)
    job = RenderJob(pictures / "photo.png", (pictures / "style.png",), tmp_path / "out.png",
                    _job(tmp_path, work=pictures).config, resume=flag == "resume", restart=flag == "restart")
    events: list = []
    with pytest.raises(ConfigError, match=r"work dir .*Pictures holds files hires-nst did not write") as caught:
        render(job, events.append)
    assert "photo.png" in str(caught.value) and "\n" not in str(caught.value)
    assert _snapshot(pictures) == before and sorted(p.name for p in pictures.iterdir()) == sorted(before)
    assert events == [] and not (tmp_path / "out.png").exists()


def test_render_work_dir_dot_in_a_users_folder_is_one_line_and_an_error_exit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pictures = _pictures(tmp_path)
    before = _snapshot(pictures)
    monkeypatch.chdir(pictures)
    result = runner.invoke(app, ["render", "photo.png", "style.png", "-o", "../out.png", "--work-dir", ".", *TINY])
    assert result.exit_code == classify(ConfigError("")).exit_code, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: work dir") and "did not write" in line
    assert _snapshot(pictures) == before and not (tmp_path / "out.png").exists()


def test_an_empty_or_absent_work_dir_becomes_ours_with_a_marker(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    for work in (tmp_path / "empty", tmp_path / "new" / "work"):
        result = render(_job(tmp_path, work=work, out=tmp_path / f"{work.name}.png"))
        assert (result.work_dir / WORK_MARKER).is_file() and (result.work_dir / "stage-1.pt").is_file()


def test_restart_deletes_only_our_files_in_our_work_dir(tmp_path: Path) -> None:
    job = _job(tmp_path)
    with pytest.raises(Interrupted):
        render(job, _stop_in_stage_two)
    work = tmp_path / "work"
    (work / "notes.txt").write_text("mine")  # a user's files, put there later
    (work / "stage-final.png").write_text("mine too")
    (work / ".holiday.jpg.a1b2c3d4.part").write_text("and this")
    events: list = []
    render(_with(job, restart=True), events.append)
    assert [(work / n).read_text() for n in ("notes.txt", "stage-final.png", ".holiday.jpg.a1b2c3d4.part")] == [
        "mine", "mine too", "and this"]
    assert [e.stage for e in events if isinstance(e, StageStarted)] == [0, 1]  # the old stage was discarded


def test_a_work_dir_of_an_earlier_version_is_recognised_resumed_and_marked(tmp_path: Path) -> None:
    job = _job(tmp_path)
    with pytest.raises(Interrupted):
        render(job, _stop_in_stage_two)
    work = tmp_path / "work"
    (work / WORK_MARKER).unlink()  # as main before the marker left it
    (work / "job.log").write_text("2025-01-01T00:00:00 start j: c.png in the style of s.png -> out.png\n")
    assert render(_with(job, resume=True)).stages_reused == 1
    assert (work / WORK_MARKER).is_file()


@pytest.mark.parametrize("files, ours", [
    ({"job.log": "2025-01-01T00:00:00 start j: a.png in the style of s.png -> j.png\n"}, True),
    ({"lock": "4242", "status.json": '{"state": "failed", "pid": 4242}'}, True),
    ({"settings.json": '{"fingerprint": {}, "schedule": []}', "stage-0.pt": "", ".stage-0.png.a1b2c3d4.part": ""},
     True),
    ({"settings.json": '{"camera": "x100"}'}, False),
    ({"lock": "the combination is 1234"}, False),
    ({"settings.json": '{"fingerprint": {}, "schedule": []}', "holiday.jpg": ""}, False),
    ({"sub": None}, False),
])
def test_an_unmarked_folder_is_ours_only_if_every_file_is_one_we_write_and_a_record_says_so(
        tmp_path: Path, files: dict, ours: bool) -> None:
    folder = tmp_path / "w"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).mkdir() if text is None else (folder / name).write_text(text)
    plan = WritePlan()
    plan.work_dir(folder, "the work dir")
    if ours:
        check_writes(plan)
    else:
        with pytest.raises(ConfigError, match="did not write"):
            check_writes(plan)


# --- items 1 and 3 for a render: nothing it writes may be an input, nor lie in its work dir -------------


def test_an_input_inside_the_work_dir_is_refused(tmp_path: Path) -> None:
    job = _job(tmp_path)
    with pytest.raises(Interrupted):
        render(job, _stop_in_stage_two)
    stage = tmp_path / "work" / "stage-0.png"
    before = stage.read_bytes()
    with pytest.raises(OutputError, match=r"content image .*stage-0.png is inside the work dir"):
        render(_with(job, content=stage, restart=True))
    assert stage.read_bytes() == before


@pytest.mark.parametrize("written", ["stage sheet", "settings", "animation"])
def test_a_file_a_render_writes_beside_its_output_may_not_be_an_input(tmp_path: Path, written: str) -> None:
    job = _job(tmp_path)
    target = {"stage sheet": tmp_path / "out-stages.png", "settings": tmp_path / "out.png.json",
              "animation": tmp_path / "anim.gif"}[written]
    write_image(target, 40, 40, 3) if target.suffix != ".json" else target.write_text("{}")
    asked = {"stage sheet": {"save_stages": True}, "settings": {}, "animation": {"animate": str(target)}}[written]
    config = resolve(("test", {**job.config.to_dict(), "output": {**job.config.to_dict()["output"], **asked}}))
    before = target.read_bytes()
    with pytest.raises(OutputError, match="would overwrite the style image 1"):
        render(_with(job, styles=(target,), config=config))
    assert target.read_bytes() == before


# --- item 4: a name whose temp file cannot exist is refused before the work ----------------------------


def test_an_output_name_too_long_for_its_temp_file_is_refused_before_any_work(tmp_path: Path) -> None:
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    out = tmp_path / ("x" * (limit - 14) + ".png")  # fits; ".NAME.XXXXXXXX.part" does not
    events: list = []
    with pytest.raises(OutputError, match=r"too long .*choose a name at least \d+ characters shorter") as caught:
        render(_job(tmp_path, out=out), events.append)
    assert "\n" not in str(caught.value)
    assert events == [] and not (tmp_path / "work").exists()


def test_a_work_dir_name_too_long_is_refused_before_any_work(tmp_path: Path) -> None:
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    with pytest.raises(OutputError, match=r"work dir .*too long.*at least 1 character shorter"):
        render(_job(tmp_path, work=tmp_path / "w" / ("x" * (limit + 1))))
    assert not (tmp_path / "w").exists() and not (tmp_path / "out.png").exists()


def test_the_longest_name_that_fits_renders(tmp_path: Path) -> None:
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    longest = limit - len(".XXXXXXXX.part") - 1 - len(".trace.csv")  # the trace beside it is the longest name
    out = tmp_path / ("x" * (longest - 4) + ".png")
    result = render(_job(tmp_path, out=out))
    assert result.output == out and out.is_file() and (tmp_path / f"{out.name}.trace.csv").is_file()


def test_the_temp_name_rule_is_the_one_write_atomically_uses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hires_nst.io import images

    made: list[str] = []
    real = images.tempfile.mkstemp

    def spying(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        made.append(Path(name).name)
        return fd, name

    monkeypatch.setattr(images.tempfile, "mkstemp", spying)
    images.write_atomically(tmp_path / "a.png", lambda f: f.write(b"x"))
    assert len(made[0]) == len(images.temp_name("a.png"))
