"""The live page over plain HTTP: the page, its state from a work dir or a batch folder, the images,
the inputs' thumbnails by index."""

from __future__ import annotations

import http.client
import io
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from hires_nst.errors import InputError
from hires_nst.events import Planned, PlannedStage
from hires_nst.io import images
from hires_nst.io.trace import COLUMNS
from hires_nst.web.server import LiveServer, Watched, exposure_warning, watch_target, watched_path
from tests.helpers.paths import CONTENT, STYLE
from tests.helpers.synthetic import write_image


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


def _batch_folder(folder: Path) -> Path:
    """A batch's output folder: job a finished, b running, c pending (no image yet)."""
    _work_dir(folder / "work" / "a", state="finished")
    _work_dir(folder / "work" / "b")
    jobs = [{"name": "a", "status": "finished", "width": 200, "height": 200, "seconds": 12.5, "work_dir": "work/a"},
            {"name": "b", "status": "running", "work_dir": "work/b"},
            {"name": "c", "status": "pending", "work_dir": "work/c"}]
    (folder / "manifest.json").write_text(json.dumps({"counts": {"finished": 1, "running": 1, "pending": 1},
                                                      "jobs": jobs}))
    return folder


def test_a_batch_folder_shows_every_job_with_a_thumbnail(tmp_path: Path) -> None:
    folder = _batch_folder(tmp_path / "out")
    with LiveServer(Watched(watched_path(folder)), port=0) as server:
        state = json.loads(_get(server.url + "state.json")[1])
        assert _get(server.url + "thumb/0.jpg")[0] == "image/jpeg"
        with pytest.raises(urllib.error.HTTPError, match="404"):
            _get(server.url + "thumb/2.jpg")  # job c has no image yet
    assert [j["status"] for j in state["jobs"]] == ["finished", "running", "pending"]
    assert state["jobs"][0]["size"] == "200x200" and state["jobs"][0]["thumb"] and not state["jobs"][2]["thumb"]
    assert state["job"] == "b" and state["state"] == "running"  # the running job in detail


def _image_size(jpeg: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG"
        return image.size


def test_the_inputs_are_served_small_by_index_and_the_state_names_the_output(tmp_path: Path) -> None:
    work = _work_dir(tmp_path / "work")
    small = write_image(tmp_path / "small painting.png", 48, 40)
    output = tmp_path / "out" / "result.png"
    with LiveServer(Watched(work, [CONTENT, STYLE, small], output), port=0) as server:
        state = json.loads(_get(server.url + "state.json")[1])
        sizes = [_image_size(_get(server.url + f"input/{i}.jpg")[1]) for i in range(3)]
        with pytest.raises(urllib.error.HTTPError, match="404"):
            _get(server.url + "input/3.jpg")
    assert sizes == [(256, 192), (256, 160), (48, 40)]  # 512x384 and 512x320 shrunk; 48x40 never enlarged
    assert state["output"] == str(output) and state["state"] == "running"
    assert [(i["index"], i["role"], i["name"]) for i in state["inputs"]] == \
        [(0, "photo", "tubingen.jpg"), (1, "painting", "starry_night.jpg"), (2, "painting", "small painting.png")]


def test_an_input_is_asked_for_by_its_index_never_by_a_path(tmp_path: Path) -> None:
    secret = tmp_path / "secret.jpg"
    images.save_image(secret, np.full((20, 20, 3), 0.5, np.float32))  # beside the photo, not an input
    photo = write_image(tmp_path / "photo.png", 48, 40)
    with LiveServer(Watched(_work_dir(tmp_path / "work"), [photo], tmp_path / "o.png"), port=0) as server:
        assert _raw(server.url, "/input/0.jpg").status == 200
        for path in ("/input/1.jpg", "/input/-1.jpg", "/input/secret.jpg", "/input/../secret.jpg",
                     "/input/%2e%2e%2fsecret.jpg", "/input/0.jpg/../secret.jpg", "/input/0.png", "/input/0",
                     "/input/\u00b2.jpg", "/input/" + "9" * 5000 + ".jpg", "/input/", f"/input/{secret}",
                     "/../input/0.jpg", "/secret.jpg"):
            response = _raw(server.url, path)
            assert response.status == 404 and b"\xff\xd8" not in response.body, path


def test_a_batch_page_has_no_inputs_and_watch_of_an_output_shows_its_own(tmp_path: Path) -> None:
    with LiveServer(Watched(_batch_folder(tmp_path / "batch")), port=0) as server:
        assert "inputs" not in json.loads(_get(server.url + "state.json")[1])
        assert _raw(server.url, "/input/0.jpg").status == 404
    work = _work_dir(tmp_path / "work", state="finished")
    output = tmp_path / "out.png"
    (tmp_path / "out.png.json").write_text(json.dumps({"content": str(CONTENT), "styles": [str(STYLE)],
                                                       "output": str(output), "work_dir": str(work)}))
    shown = watch_target(output)
    assert (shown.path, shown.inputs, shown.output) == (work, (CONTENT, STYLE), output)
    assert watch_target(work).inputs == () and "output" not in watch_target(work).state()


def test_a_page_open_to_the_network_is_said_loudly_and_paths_are_checked(tmp_path: Path) -> None:
    assert exposure_warning("127.0.0.1") is None
    assert "WARNING" in exposure_warning("0.0.0.0")
    with pytest.raises(InputError, match="neither a render's work dir"):
        watched_path(tmp_path)
    output = tmp_path / "out.png"
    (tmp_path / "out.png.json").write_text(json.dumps({"work_dir": str(tmp_path / "w")}))
    (tmp_path / "w").mkdir()
    assert watched_path(output) == tmp_path / "w"  # a finished output: its record names the work dir


def test_render_web_and_watch_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import hires_nst.cli.main
    import hires_nst.engine.render
    from hires_nst.cli.main import app
    from hires_nst.engine.render import RenderResult

    said: list[str] = []
    seen: list[str] = []

    def fake(job, sink) -> RenderResult:  # the engine replaced: what reaches the page while it "runs"
        work = _work_dir(tmp_path / "work")
        sink(Planned((PlannedStage(100, 100, 20, 0),), "cpu", "original", str(work), str(work / "preview.jpg")))
        url = next(line for line in said if line.startswith("live page: ")).split("live page: ")[1]
        seen.append(json.loads(_get(url + "state.json")[1])["state"])
        return RenderResult(job.output, tmp_path / "o.json", 8, 8, 0.1, {"total": 1.0}, work)

    monkeypatch.setattr(hires_nst.cli.main, "say_line", said.append)
    monkeypatch.setattr(hires_nst.engine.render, "render", fake)
    runner = CliRunner()
    result = runner.invoke(app, ["render", str(tmp_path / "c.png"), str(tmp_path / "c.png"), "-o",
                                 str(tmp_path / "o.png"), "--web", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert seen == ["running"]
    bad = runner.invoke(app, ["watch", str(tmp_path)])
    assert bad.exit_code == 1 and "neither a render's work dir" in bad.output


# --- a hostile network, a careless command line ---------------------------------------------------


def _raw(url: str, path: str, method: str = "GET", host: str | None = None) -> http.client.HTTPResponse:
    """A request as any client may send it: any bytes in the path (as latin-1, as the server reads
    them), any Host header (a page served through DNS rebinding sends its own name)."""
    parts = urllib.parse.urlsplit(url)
    host = f"{parts.hostname}:{parts.port}" if host is None else host
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1"))
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        response.body = response.read()  # type: ignore[attr-defined]
    return response


def test_a_request_naming_another_host_is_refused_against_dns_rebinding(tmp_path: Path) -> None:
    work = _work_dir(tmp_path / "work")
    with LiveServer(Watched(work), port=0) as server:
        port = urllib.parse.urlsplit(server.url).port
        for host in ("attacker.example", f"attacker.example:{port}", f"localhost.attacker.example:{port}",
                     f"127.0.0.1:{port + 1}", ""):
            refused = _raw(server.url, "/state.json", host=host)
            assert refused.status == 421 and b"work_dir" not in refused.body, host
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", f"[::1]:{port}"):
            assert _raw(server.url, "/state.json", host=host).status == 200, host


def test_odd_requests_get_answers_and_the_server_names_no_python_version(tmp_path: Path) -> None:
    folder = _batch_folder(tmp_path / "out")
    with LiveServer(Watched(folder), port=0) as server:
        assert _raw(server.url, "/thumb/0.jpg").status == 200
        for path in ("/thumb/\u00b2.jpg", "/thumb/%C2%B2.jpg", "/thumb/\u0661.jpg".encode().decode("latin-1"),
                     "/thumb/" + "9" * 5000 + ".jpg", "/thumb/-1.jpg", "/thumb/.jpg", "/thumb/0"):
            assert _raw(server.url, path).status == 404, path
        head = _raw(server.url, "/", method="HEAD")
        get = _raw(server.url, "/")
        assert head.status == 200 and head.body == b"" and head.getheader("Content-Length") == str(len(get.body))
        assert _raw(server.url, "/preview.jpg", method="HEAD").getheader("Content-Type") == "image/jpeg"
        for response in (head, get, _raw(server.url, "/nothing")):
            assert "Python" not in response.getheader("Server", "") and "Python" not in str(response.body)


def test_an_ipv6_address_is_served_with_brackets_in_the_url(tmp_path: Path) -> None:
    work = _work_dir(tmp_path / "work")
    with LiveServer(Watched(work), host="::1", port=0) as server:
        assert server.url.startswith("http://[::1]:")
        assert json.loads(_get(server.url + "state.json")[1])["state"] == "running"
    assert exposure_warning("::1") is None and "WARNING" in exposure_warning("::")


def test_a_page_open_to_the_network_needs_the_random_key_in_its_url(tmp_path: Path) -> None:
    work = _work_dir(tmp_path / "work")
    with LiveServer(Watched(work), host="0.0.0.0", port=0) as server, \
            LiveServer(Watched(work), host="0.0.0.0", port=0) as other:
        key = urllib.parse.urlsplit(server.url).path.strip("/")
        assert len(key) >= 16 and key != urllib.parse.urlsplit(other.url).path.strip("/")
        local = f"http://127.0.0.1:{urllib.parse.urlsplit(server.url).port}/"
        assert json.loads(_get(local + key + "/state.json")[1])["state"] == "running"
        assert _get(local + key + "/")[0].startswith("text/html")
        for path in ("/", "/state.json", "/preview.jpg", f"/{key[:-1]}/state.json"):
            assert _raw(local, path).status == 404, path


@pytest.mark.parametrize("command", ["render", "watch"])
@pytest.mark.parametrize("flags,expected", [
    (["--port", "-1"], "--port must be between 0"), (["--port", "70000"], "--port must be between 0"),
    (["--host", ""], "--host is empty"),
])
def test_a_bad_port_or_host_is_one_usage_line(command: str, flags: list[str], expected: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    import hires_nst.engine.render
    from hires_nst.cli.main import app

    monkeypatch.setattr(hires_nst.engine.render, "render", lambda job, sink: pytest.fail("the render started"))
    work = _work_dir(tmp_path / "work")
    images.save_image(tmp_path / "c.png", np.full((20, 20, 3), 0.5, np.float32))
    args = (["render", str(tmp_path / "c.png"), str(tmp_path / "c.png"), "-o", str(tmp_path / "o.png"), "--web"]
            if command == "render" else ["watch", str(work)])
    before = set(tmp_path.rglob("*"))

    result = CliRunner().invoke(app, [*args, *flags])

    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: {expected}"), line
    assert set(tmp_path.rglob("*")) == before


def test_a_port_in_use_is_said_without_naming_another_command(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hires_nst.cli.main import app

    work = _work_dir(tmp_path / "work")
    with LiveServer(Watched(work), port=0) as busy:
        port = str(urllib.parse.urlsplit(busy.url).port)
        result = CliRunner().invoke(app, ["watch", str(work), "--port", port])
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: cannot listen on 127.0.0.1:") and "--web" not in line and "--port" in line


def test_a_finished_output_whose_work_dir_was_deleted_says_it_is_gone(tmp_path: Path) -> None:
    output = tmp_path / "out.png"
    (tmp_path / "out.png.json").write_text(json.dumps({"work_dir": str(tmp_path / "deleted")}))
    with pytest.raises(InputError, match=r"work dir .*deleted.* no longer exists"):
        watched_path(output)
    work = _work_dir(tmp_path / "work")
    watched = Watched(work)
    assert watched.state()["state"] == "running"
    for child in work.iterdir():
        child.unlink()
    work.rmdir()  # removed while the page is open
    state = watched.state()
    assert state["state"] == "gone" and "no longer exists" in state["error"]
