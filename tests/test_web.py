"""The live page over plain HTTP: the page, its state from a work dir or a batch folder, the images."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hires_nst import images
from hires_nst.errors import InputError
from hires_nst.events import Planned, PlannedStage
from hires_nst.trace import COLUMNS
from hires_nst.web import LiveServer, Watched, exposure_warning, live_page, watched_path


def _get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.headers["Content-Type"], response.read()


def _work_dir(folder: Path, state: str = "running", rows: int = 30) -> Path:
    """A work dir as a render leaves it at stage 2 of 2, iteration ``rows - 20``."""
    folder.mkdir(parents=True)
    (folder / "status.json").write_text(json.dumps({"state": state, "stage": 1, "stages": 2}))
    (folder / "settings.json").write_text(json.dumps({"fingerprint": {}, "schedule": [[100, 100, 20], [200, 200, 40]]}))
    lines = [",".join(COLUMNS)]
    for i in range(rows):
        stage, iteration, size = (0, i + 1, 100) if i < 20 else (1, i - 19, 200)
        lines.append(f"{stage},{size},{size},{iteration},{2.0 / (i + 1)},1,1,0,0.5,{0.5 * (i + 1)},10.0")
    lines.append("1,200,200,11,0.1,1")  # a row being written: left out
    (folder / "trace.csv").write_text("\n".join(lines) + "\n")
    images.save_image(folder / "preview.jpg", np.full((20, 20, 3), 0.5, np.float32))
    return folder


def test_the_page_its_state_and_its_image_from_a_work_dir(tmp_path: Path) -> None:
    work = _work_dir(tmp_path / "work")
    with LiveServer(Watched(work), port=0) as server:
        assert server.url.startswith("http://127.0.0.1:")
        kind, page = _get(server.url)
        assert kind.startswith("text/html") and b"state.json" in page and b'id="preview"' in page
        state = json.loads(_get(server.url + "state.json")[1])
        kind, jpeg = _get(server.url + "preview.jpg")
    assert kind == "image/jpeg" and jpeg[:2] == b"\xff\xd8"
    assert (state["state"], state["stage"], state["stages"], state["iteration"], state["iterations"]) == \
        ("running", 2, 2, 10, 40)
    assert state["loss"] == pytest.approx(2.0 / 30) and len(state["curve"]) == 30
    # 30 iterations of 0.04 MP left at 0.5 s per 0.04 MP: 15 s.
    assert state["eta"] == pytest.approx(15.0)
    assert state["preview"] > 0


def test_a_batch_folder_shows_every_job_with_a_thumbnail(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    _work_dir(folder / "work" / "a", state="finished")
    _work_dir(folder / "work" / "b")
    jobs = [{"name": "a", "status": "finished", "width": 200, "height": 200, "seconds": 12.5, "work_dir": "work/a"},
            {"name": "b", "status": "running", "work_dir": "work/b"},
            {"name": "c", "status": "pending", "work_dir": "work/c"}]
    (folder / "manifest.json").write_text(json.dumps({"counts": {"finished": 1, "running": 1, "pending": 1},
                                                      "jobs": jobs}))
    with LiveServer(Watched(watched_path(folder)), port=0) as server:
        state = json.loads(_get(server.url + "state.json")[1])
        assert _get(server.url + "thumb/0.jpg")[0] == "image/jpeg"
        with pytest.raises(urllib.error.HTTPError, match="404"):
            _get(server.url + "thumb/2.jpg")  # job c has no image yet
    assert [j["status"] for j in state["jobs"]] == ["finished", "running", "pending"]
    assert state["jobs"][0]["size"] == "200x200" and state["jobs"][0]["thumb"] and not state["jobs"][2]["thumb"]
    assert state["job"] == "b" and state["state"] == "running"  # the running job in detail


def test_render_web_learns_the_work_dir_from_the_render(tmp_path: Path) -> None:
    work = _work_dir(tmp_path / "work")
    said: list[str] = []
    with live_page(0, "127.0.0.1", said.append) as sink:
        url = said[-1].split("live page: ")[1]
        assert json.loads(_get(url + "state.json")[1]) == {"state": "starting"}
        sink(Planned((PlannedStage(100, 100, 20, 0),), "cpu", "original", str(work), str(work / "preview.jpg")))
        assert json.loads(_get(url + "state.json")[1])["work_dir"] == str(work)
    with live_page(None, "127.0.0.1", said.append) as sink:  # no --web: nothing served, nothing said
        assert len(said) == 1


def test_a_page_open_to_the_network_is_said_loudly_and_paths_are_checked(tmp_path: Path) -> None:
    assert exposure_warning("127.0.0.1") is None
    assert "WARNING" in exposure_warning("0.0.0.0")
    with pytest.raises(InputError, match="neither a render's work dir"):
        watched_path(tmp_path)
    output = tmp_path / "out.png"
    (tmp_path / "out.png.json").write_text(json.dumps({"work_dir": str(tmp_path / "w")}))
    assert watched_path(output) == tmp_path / "w"  # a finished output: its record names the work dir


def test_render_web_and_watch_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import hires_nst.cli
    import hires_nst.render
    from hires_nst.cli import app
    from hires_nst.render import RenderResult

    said: list[str] = []
    seen: list[str] = []

    def fake(job, sink) -> RenderResult:  # the engine replaced: what reaches the page while it "runs"
        work = _work_dir(tmp_path / "work")
        sink(Planned((PlannedStage(100, 100, 20, 0),), "cpu", "original", str(work), str(work / "preview.jpg")))
        url = next(line for line in said if line.startswith("live page: ")).split("live page: ")[1]
        seen.append(json.loads(_get(url + "state.json")[1])["state"])
        return RenderResult(job.output, tmp_path / "o.json", 8, 8, 0.1, {"total": 1.0}, work)

    monkeypatch.setattr(hires_nst.cli, "say_line", said.append)
    monkeypatch.setattr(hires_nst.render, "render", fake)
    runner = CliRunner()
    result = runner.invoke(app, ["render", str(tmp_path / "c.png"), str(tmp_path / "c.png"), "-o",
                                 str(tmp_path / "o.png"), "--web", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert seen == ["running"]
    bad = runner.invoke(app, ["watch", str(tmp_path)])
    assert bad.exit_code == 1 and "neither a render's work dir" in bad.output
