"""A live page for a render or a batch: ``render --web [PORT]`` and ``hires-nst watch DIR``.

Everything the page shows is read from files the engine writes anyway, so watching needs nothing
from the process that renders (``watch`` works on a render started elsewhere, or finished):

    work dir      status.json (state, stage), settings.json (the planned stages), trace.csv (a row
                  per iteration: losses, seconds), preview.jpg (the image in progress, preview.py)
    batch folder  manifest.json (every job with its status and work dir)
    inputs        the photo and paintings of ``render --web`` (or named by a finished output's
                  settings), served small by their index (thumbs.py), with the output's path

The server is the standard library's threading HTTP server, bound to 127.0.0.1 unless told
otherwise (IPv6 too: ``--host ::1``); ``live.py`` runs it for ``render --web``. The page
(``live.html``) is one static file that polls ``state.json`` once a second. It answers only
requests whose Host header names this machine (a web page the person visits could otherwise read
it through DNS rebinding); opened to the network (``--host`` not loopback), it lives under a
random key in its URL, which only the printed link holds.

Over 300 lines on purpose: one HTTP handler with its routes; the page itself is live.html.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import socket
import threading
from collections.abc import Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

from hires_nst.errors import InputError, OutputError
from hires_nst.events import Event, Planned
from hires_nst.io.preview import PREVIEW_NAME
from hires_nst.io.progresstext import WorkLeft
from hires_nst.web.access import Access, check_address, is_loopback
from hires_nst.web.thumbs import Thumbnails

DEFAULT_PORT = 8765
LOCAL_HOST = "127.0.0.1"
CURVE_POINTS = 400  # the loss curve is thinned to about this many points
MANIFEST = "manifest.json"  # batch.MANIFEST; not imported, batch loads the engine


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _trace_rows(path: Path) -> list[dict[str, str]]:
    """The trace's complete rows (a row being written is left out)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except OSError:
        return []
    return [r for r in rows if r.get("peak_memory_mb") not in (None, "")]


def _version(path: Path) -> int:
    """Changes whenever the file is replaced (the page reloads the image then); 0 if absent."""
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0


def render_state(work_dir: Path) -> dict[str, Any]:
    """What the page shows of one render, from its work dir."""
    if not work_dir.is_dir():
        return {"work_dir": str(work_dir), "state": "gone", "curve": [],
                "error": f"the work dir {work_dir} no longer exists (deleted, or moved)"}
    status = _read_json(work_dir / "status.json") or {}
    schedule = (_read_json(work_dir / "settings.json") or {}).get("schedule") or []
    rows = _trace_rows(work_dir / "trace.csv")
    state: dict[str, Any] = {"work_dir": str(work_dir), "state": status.get("state", "waiting"),
                             "stages": len(schedule), "preview": _version(work_dir / PREVIEW_NAME),
                             "error": status.get("error")}
    if rows:
        last = rows[-1]
        stage = int(last["stage"])
        state.update(stage=stage + 1, width=int(last["width"]), height=int(last["height"]),
                     iteration=int(last["iteration"]), loss=float(last["total"]), seconds=float(last["seconds"]),
                     elapsed=float(last["elapsed"]))
        if stage < len(schedule):
            state["iterations"] = schedule[stage][2]
        state["eta"] = _eta(schedule, rows, stage) if state["state"] == "running" else None
    step = max(1, len(rows) // CURVE_POINTS)
    state["curve"] = [[float(r["elapsed"]), float(r["total"]), int(r["stage"]) + 1] for r in rows[::step]]
    return state


def _eta(schedule: list[list[int]], rows: list[dict[str, str]], stage: int) -> float | None:
    """Seconds left, from the last iterations of the stage before and of the current one (the same
    cost model as the logs)."""
    left = WorkLeft([tuple(s) for s in schedule])  # type: ignore[misc]
    eta = None
    for measured in (stage - 1, stage):
        recent = [r for r in rows if int(r["stage"]) == measured][-50:]
        previous = int(recent[0]["iteration"]) - 1 if recent else 0
        for row in recent:
            iteration = int(row["iteration"])
            eta = left.step(measured, iteration, schedule[measured][2], float(row["seconds"]), iteration - previous)
            previous = iteration
    return eta


def batch_state(folder: Path) -> dict[str, Any]:
    """The manifest's jobs, and the running job (else the last one with a trace) in detail."""
    manifest = _read_json(folder / MANIFEST) or {}
    jobs = []
    for index, job in enumerate(manifest.get("jobs", [])):
        work = folder / job.get("work_dir", "")
        jobs.append({"index": index, "name": job.get("name"), "status": job.get("status"),
                     "size": f"{job['width']}x{job['height']}" if job.get("width") else "",
                     "seconds": job.get("seconds"), "error": job.get("error"), "output": job.get("output"),
                     "thumb": _version(work / PREVIEW_NAME)})
    state: dict[str, Any] = {"batch": str(folder), "counts": manifest.get("counts", {}), "jobs": jobs}
    current = next((j for j in jobs if j["status"] == "running"), None)
    current = current or next((j for j in reversed(jobs) if j["thumb"]), None)
    if current is not None:
        state["job"] = current["name"]
        state.update(render_state(folder / manifest["jobs"][current["index"]]["work_dir"]))
    return state


class Watched:
    """What the server shows: a work dir, a batch folder, or (``render --web``) the work dir the
    render announces in its ``Planned`` event; an event sink for that case. A render's ``inputs``
    (the photo, then the paintings) and ``output``, when known, are shown with it."""

    def __init__(self, path: Path | None = None, inputs: Sequence[Path] = (), output: Path | None = None) -> None:
        self.path, self.output = path, output
        self.inputs = tuple(Path(p) for p in inputs)
        self.thumbnails = Thumbnails(self.inputs)

    def __call__(self, event: Event) -> None:
        if isinstance(event, Planned) and event.work_dir:
            self.path = Path(event.work_dir)

    @property
    def is_batch(self) -> bool:
        return self.path is not None and (self.path / MANIFEST).is_file()

    def state(self) -> dict[str, Any]:
        if self.path is not None and self.is_batch:
            return batch_state(self.path)
        state: dict[str, Any] = {"state": "starting"} if self.path is None else render_state(self.path)
        if self.output is not None:
            state["output"] = str(self.output)
        if self.inputs:
            state["inputs"] = [{"index": i, "role": "painting" if i else "photo", "name": p.name, "path": str(p)}
                               for i, p in enumerate(self.inputs)]
        return state

    def image(self, job: int | None = None) -> Path | None:
        """The preview of the render, of batch job ``job``, or of the job the page details."""
        if self.path is None:
            return None
        if not self.is_batch:
            return self.path / PREVIEW_NAME
        jobs = (_read_json(self.path / MANIFEST) or {}).get("jobs", [])
        if job is None:
            state = self.state()
            job = next((j["index"] for j in state["jobs"] if j["name"] == state.get("job")), None)
        if job is None or not 0 <= job < len(jobs):
            return None
        return self.path / jobs[job].get("work_dir", "") / PREVIEW_NAME


def _output_record(path: Path) -> dict[str, Any] | None:
    """The settings a finished output ``OUT`` keeps beside it (``OUT.json``, or ``path`` itself)."""
    record = _read_json(path.with_name(path.name + ".json")) if path.suffix != ".json" else _read_json(path)
    return record if isinstance(record, dict) else None


def watched_path(path: Path) -> Path:
    """A work dir or batch folder from what a person points at: either of them, or a finished
    output (its settings file ``OUT.json`` names the work dir)."""
    if path.is_dir():
        if (path / MANIFEST).is_file() or (path / "status.json").is_file() or (path / "settings.json").is_file():
            return path
        raise InputError(f"{path} is neither a render's work dir (status.json) nor a batch folder ({MANIFEST})")
    record = _output_record(path)
    if record and record.get("work_dir"):
        work_dir = Path(record["work_dir"])
        if not work_dir.is_dir():
            raise InputError(f"the work dir of {path}, {work_dir}, no longer exists (deleted, or moved): "
                             "nothing to watch")
        return work_dir
    raise InputError(f"nothing to watch at {path}: give a work dir, a batch output folder or a finished output")


def watch_target(path: Path) -> Watched:
    """``hires-nst watch PATH``: what ``watched_path`` finds; a finished output also brings the
    inputs and the output its settings name (a work dir does not record them)."""
    record = _output_record(path) if not path.is_dir() else None
    if record and record.get("content"):
        return Watched(watched_path(path), [Path(record["content"]), *map(Path, record.get("styles", []))],
                       Path(record["output"]) if record.get("output") else None)
    return Watched(watched_path(path))


_THUMB = re.compile(r"/thumb/([0-9]{1,6})\.jpg")  # a batch job's preview; ASCII digits only: not "²"
_INPUT = re.compile(r"/input/([0-9]{1,3})\.jpg")  # a render's input by index (thumbs.py): never a path


def _handler(watched: Watched) -> type[BaseHTTPRequestHandler]:
    page = resources.files("hires_nst.web").joinpath("live.html").read_bytes()

    class Handler(BaseHTTPRequestHandler):
        server_version = "hires-nst"

        def version_string(self) -> str:  # no Python version in the Server header
            return self.server_version

        def do_GET(self) -> None:  # noqa: N802 (the http.server name)
            self._answer(body=True)

        def do_HEAD(self) -> None:  # noqa: N802
            self._answer(body=False)

        def _answer(self, body: bool) -> None:
            access: Access = self.server.access  # type: ignore[attr-defined]
            if not access.allows(self.headers.get("Host")):
                self.send_error(HTTPStatus.MISDIRECTED_REQUEST, "this page answers to its own address only")
                return
            route = access.route(self.path)
            content = self._content(route) if route is not None else None
            if content is None:
                self.send_error(HTTPStatus.NOT_FOUND)
            else:
                self._send(*content, body=body)

        def _content(self, route: str) -> tuple[bytes, str] | None:
            if route == "/":
                return page, "text/html; charset=utf-8"
            if route == "/state.json":
                return json.dumps(watched.state()).encode(), "application/json"
            picture = _INPUT.fullmatch(route)
            if picture:
                small = watched.thumbnails.get(int(picture.group(1)))
                return (small, "image/jpeg") if small else None
            thumb = _THUMB.fullmatch(route)
            if route != "/preview.jpg" and not thumb:
                return None
            image = watched.image(int(thumb.group(1)) if thumb else None)
            try:
                return (image.read_bytes(), "image/jpeg") if image else None
            except OSError:
                return None  # no image yet

        def _send(self, data: bytes, kind: str, body: bool) -> None:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if body:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # requests are not worth a line each
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    access: Access


class _Server6(_Server):
    """IPv6 (``--host ::1``); ``::`` takes IPv4 too where the system allows."""

    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class LiveServer:
    """The page's HTTP server on a daemon thread; ``port`` 0 takes any free one (see ``url``)."""

    def __init__(self, watched: Watched, host: str = LOCAL_HOST, port: int = DEFAULT_PORT) -> None:
        check_address(host, port)
        host = host.strip().strip("[]")
        try:
            self.server = (_Server6 if ":" in host else _Server)((host, port), _handler(watched))
        except OSError as exc:
            raise OutputError(f"cannot listen on {_netloc(host, port)} ({exc.strerror or exc}); "
                              "try another --port, or 0 for any free one") from None
        self.server.access = Access(host, self.server.server_address[1])
        self.host, self.watched = host, watched
        self.thread = threading.Thread(target=self.server.serve_forever, name="hires-nst-web", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{_netloc(self.host, self.server.server_address[1])}{self.server.access.prefix}/"

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def exposure_warning(host: str) -> str | None:
    """The loud line for a page opened past this machine (None when it is local only)."""
    if is_loopback(host):
        return None
    return (f"WARNING: the live page listens on {host}, not only on this machine: anyone who can reach it and "
            "has its link (the random key in it) sees the image in progress and the paths of your files")
