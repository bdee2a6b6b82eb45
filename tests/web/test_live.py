"""``render --web``: the page learns the work dir from the render, ``--open`` opens it in a browser,
and after the render it stays up until Ctrl-C at a terminal, or closes at once elsewhere."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import hires_nst.web.live
from hires_nst.events import Planned, PlannedStage
from hires_nst.web.live import live_page, open_in_browser
from tests.helpers.paths import CONTENT, STYLE


def _state(url: str) -> dict:
    with urllib.request.urlopen(url + "state.json", timeout=10) as response:
        return json.loads(response.read())


def _planned(work: Path) -> Planned:
    return Planned((PlannedStage(100, 100, 20, 0),), "cpu", "original", str(work), str(work / "preview.jpg"))


def _finished_work_dir(folder: Path) -> Path:
    folder.mkdir()
    (folder / "status.json").write_text(json.dumps({"state": "finished"}))
    return folder


@pytest.fixture
def graphical(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A desktop session whose browser only records the pages it was asked to open."""
    opened: list[str] = []
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.delenv("BROWSER", raising=False)
    monkeypatch.setattr(hires_nst.web.live.webbrowser, "open", lambda url: opened.append(url) or True)
    return opened


def test_render_web_learns_the_work_dir_from_the_render(tmp_path: Path) -> None:
    work = tmp_path / "work"
    said: list[str] = []
    with live_page(0, "127.0.0.1", said.append, inputs=[CONTENT, STYLE], output=tmp_path / "o.png") as page:
        url = said[-1].split("live page: ")[1]
        starting = _state(url)
        page(_planned(work))
        assert _state(url)["work_dir"] == str(work)
    assert starting["state"] == "starting" and starting["output"] == str(tmp_path / "o.png")
    assert [i["name"] for i in starting["inputs"]] == ["tubingen.jpg", "starry_night.jpg"]  # shown before any work
    with live_page(None, "127.0.0.1", said.append) as page:  # no --web: nothing served, nothing said
        page(_planned(work))
        page.after_render(True, said.append)
    assert len(said) == 1


def test_open_opens_the_page_once_it_listens_with_its_key(tmp_path: Path, graphical: list[str]) -> None:
    said: list[str] = []
    with live_page(0, "0.0.0.0", said.append, open_browser=True) as page:
        url = said[-1].split("live page: ")[1]
        assert graphical == [url] and len(url.rstrip("/").rsplit("/", 1)[1]) >= 16  # the random key is in it
        assert _state(graphical[0])["state"] == "starting"  # the page it opened answers
        assert page.server is not None
    with live_page(0, "127.0.0.1", said.append) as page:  # no --open: no browser
        assert graphical == [url]


def test_open_without_a_display_says_how_to_open_the_page(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr(hires_nst.web.live.sys, "platform", "linux")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hires_nst.web.live.webbrowser, "open", lambda url: opened.append(url) or True)
    said: list[str] = []

    assert not open_in_browser("http://127.0.0.1:8765/", said.append)  # no lynx taking over the terminal
    assert opened == [] and said == ["--open: no graphical display here (DISPLAY is not set): open "
                                     "http://127.0.0.1:8765/ in a browser yourself"]
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setattr(hires_nst.web.live.webbrowser, "open", lambda url: False)  # no browser installed
    assert not open_in_browser("http://127.0.0.1:8765/", said.append)
    assert said[-1] == "--open: no browser could be started: open http://127.0.0.1:8765/ yourself"


def test_at_a_terminal_the_page_outlives_the_render_until_ctrl_c(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    work = _finished_work_dir(tmp_path / "work")
    output = tmp_path / "o.png"
    said: list[str] = []
    seen: list[dict] = []

    def person_looks_then_presses_ctrl_c() -> None:
        seen.append(_state(url))
        seen.append(_state(url))
        raise KeyboardInterrupt

    monkeypatch.setattr(hires_nst.web.live, "wait_for_interrupt", person_looks_then_presses_ctrl_c)
    with live_page(0, "127.0.0.1", said.append, inputs=[CONTENT], output=output) as page:
        url = said[-1].split("live page: ")[1]
        page(_planned(work))  # the render runs, and returns
        page.after_render(True, said.append)  # returns once Ctrl-C is pressed; no KeyboardInterrupt out of it
    assert [(s["state"], s["output"]) for s in seen] == [("finished", str(output))] * 2
    assert said[-1] == f"render finished; live page still at {url} — Ctrl-C to stop"
    with pytest.raises(urllib.error.URLError):
        _state(url)  # stopped with the Ctrl-C


def test_without_a_terminal_the_page_closes_with_the_render_and_says_how_to_see_it_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hires_nst.web.live, "wait_for_interrupt", lambda: pytest.fail("a script would hang"))
    said: list[str] = []
    with live_page(0, "127.0.0.1", said.append, output=tmp_path / "o.png") as page:
        page(_planned(_finished_work_dir(tmp_path / "work")))
        page.after_render(False, said.append)
    assert said[-1] == (f"render finished; the live page closes with it (no terminal to stop it from); "
                        f"`hires-nst watch {tmp_path / 'o.png'}` serves it again")


def test_render_open_on_the_command_line_serves_opens_and_stays_until_ctrl_c(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, graphical: list[str]) -> None:
    from typer.testing import CliRunner

    import hires_nst.cli.main
    import hires_nst.engine.render
    from hires_nst.cli.main import app
    from hires_nst.engine.render import RenderResult

    said: list[str] = []
    after: list[dict] = []

    def fake(job, sink) -> RenderResult:  # the engine replaced: it plans, and finishes at once
        work = _finished_work_dir(tmp_path / "work")
        sink(_planned(work))
        return RenderResult(job.output, tmp_path / "result.png.json", 8, 8, 0.1, {"total": 1.0}, work)

    def ctrl_c_later() -> None:
        after.append(_state(graphical[0]))
        raise KeyboardInterrupt

    monkeypatch.setattr(hires_nst.cli.main, "say_line", said.append)
    monkeypatch.setattr(hires_nst.cli.main, "at_a_terminal", lambda: True)
    monkeypatch.setattr(hires_nst.engine.render, "render", fake)
    monkeypatch.setattr(hires_nst.web.live, "wait_for_interrupt", ctrl_c_later)
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(app, ["render", "photo.jpg", "painting.jpg", "-o", "result", "--open", "--port", "0"])

    assert result.exit_code == 0, result.output  # Ctrl-C ended the page, not a render: success
    url = next(line for line in said if line.startswith("live page: ")).split("live page: ")[1]
    assert graphical == [url]  # --open alone serves the page (it implies --web) and opens it
    assert after[0]["state"] == "finished" and after[0]["output"] == str(tmp_path / "result.png")
    assert [i["path"] for i in after[0]["inputs"]] == [str(tmp_path / "photo.jpg"), str(tmp_path / "painting.jpg")]
    assert said[-1] == f"render finished; live page still at {url} — Ctrl-C to stop"


def test_a_render_that_fails_does_not_keep_its_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import hires_nst.cli.main
    import hires_nst.engine.render
    from hires_nst.cli.main import app
    from hires_nst.errors import InputError

    def failing(job, sink) -> None:
        sink(_planned(_finished_work_dir(tmp_path / "work")))
        raise InputError("style image 1 not found: painting.jpg")

    monkeypatch.setattr(hires_nst.cli.main, "at_a_terminal", lambda: True)
    monkeypatch.setattr(hires_nst.engine.render, "render", failing)
    monkeypatch.setattr(hires_nst.web.live, "wait_for_interrupt", lambda: pytest.fail("kept after a failure"))

    result = CliRunner().invoke(app, ["render", str(CONTENT), "painting.jpg", "-o", str(tmp_path / "o.png"),
                                      "--web", "--port", "0"])

    assert result.exit_code == 1 and "error: style image 1 not found" in result.stderr
    assert "render finished" not in result.stderr


def test_a_terminal_is_where_stdin_and_stderr_are_one_and_ctrl_c_is_heard(monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import signal
    import types

    import hires_nst.cli.main
    from hires_nst.cli.main import at_a_terminal

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(hires_nst.cli.main, "err_console", types.SimpleNamespace(is_terminal=True))
    monkeypatch.setattr(hires_nst.cli.main.sys, "stdin", Tty())
    assert at_a_terminal()
    monkeypatch.setattr(hires_nst.cli.main.signal, "getsignal", lambda signum: signal.SIG_IGN)  # nohup, `&`
    assert not at_a_terminal()
    monkeypatch.undo()
    monkeypatch.setattr(hires_nst.cli.main, "err_console", types.SimpleNamespace(is_terminal=False))  # a log file
    monkeypatch.setattr(hires_nst.cli.main.sys, "stdin", Tty())
    assert not at_a_terminal()
    monkeypatch.setattr(hires_nst.cli.main, "err_console", types.SimpleNamespace(is_terminal=True))
    monkeypatch.setattr(hires_nst.cli.main.sys, "stdin", io.StringIO())  # a pipe from a script
    assert not at_a_terminal()
