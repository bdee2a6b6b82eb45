"""``render --web``: the live page of the render about to start, opened in a browser with ``--open``,
and kept up after the render ends while a person is there to stop it.

Why the page outlives the render only at a terminal: the person who watched a night's render wants
the final state (the image, the loss curve, where the output went) still there in the morning, and
Ctrl-C is how they end it. A script, a scheduler or a log has nobody to press Ctrl-C, and a render
that never returns would hang it; there the page closes with the render, and ``hires-nst watch
OUTPUT`` serves it again whenever someone wants it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import webbrowser
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from hires_nst.events import Event, null_sink
from hires_nst.web.server import LiveServer, Watched, exposure_warning

Say = Callable[[str], None]


def wait_for_interrupt() -> None:
    """Block until Ctrl-C (or SIGTERM, which the CLI turns into one) raises KeyboardInterrupt."""
    threading.Event().wait()


def _text_browsers_only() -> bool:
    """True on a Linux/BSD machine with no X or Wayland display and no $BROWSER: Python's webbrowser
    would start a text browser (lynx, w3m) there, which takes over the terminal and cannot run
    the page's script."""
    unix = sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd"))
    return unix and not any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"))


def open_in_browser(url: str, say: Say) -> bool:
    """``--open``: the page in the person's browser; says how to open it by hand when it cannot."""
    if _text_browsers_only():
        say(f"--open: no graphical display here (DISPLAY is not set): open {url} in a browser yourself")
        return False
    if not webbrowser.open(url):
        say(f"--open: no browser could be started: open {url} yourself")
        return False
    return True


class LivePage:
    """The render's event sink for the page (it learns the work dir from ``Planned``), and what
    becomes of the page once the render has finished. No page at all without ``--web``."""

    def __init__(self, watched: Watched | None = None, server: LiveServer | None = None) -> None:
        self.watched, self.server = watched, server

    def __call__(self, event: Event) -> None:
        (self.watched or null_sink)(event)

    def after_render(self, interactive: bool, say: Say) -> None:
        """Keep serving the final state until Ctrl-C when ``interactive`` (a person at a terminal);
        else say that the page closes and how to see it again. Ctrl-C here ends the page, not the
        render: the command still succeeds."""
        if self.server is None or self.watched is None:
            return
        if not interactive:
            again = self.watched.output or self.watched.path
            say(f"render finished; the live page closes with it (no terminal to stop it from); "
                f"`hires-nst watch {again}` serves it again")
            return
        say(f"render finished; live page still at {self.server.url} — Ctrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            wait_for_interrupt()


@contextlib.contextmanager
def live_page(port: int | None, host: str, say: Say, *, inputs: Sequence[Path] = (), output: Path | None = None,
              open_browser: bool = False) -> Iterator[LivePage]:
    """``render --web``: a page for the render about to start, showing its ``inputs`` (the photo, then
    the paintings) and ``output``; ``say`` prints a line for the person; ``open_browser`` opens the
    page once it listens. No page (a sink that drops everything) when ``port`` is None."""
    if port is None:
        yield LivePage()
        return
    watched = Watched(None, inputs, output)
    with LiveServer(watched, host, port) as server:
        warning = exposure_warning(host)
        if warning:
            say(warning)
        say(f"live page: {server.url}")
        if open_browser:
            open_in_browser(server.url, say)
        yield LivePage(watched, server)

