"""The ``watch`` command: the live page of a render or a batch that runs (or ran) elsewhere."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Annotated

import typer

from hires_nst.cli.common import app, reporting, say_line
from hires_nst.cli.help import PlainCommand
from hires_nst.web.server import DEFAULT_PORT, LOCAL_HOST, LiveServer, exposure_warning, watch_target


@app.command(cls=PlainCommand)
def watch(
    path: Annotated[Path, typer.Argument(help="A render's work dir (printed when it starts), a batch output "
                                         "folder, or a finished output.", show_default=False, metavar="DIR")],
    port: Annotated[int, typer.Option("--port", help="Port of the page (0: any free one).", metavar="PORT")]
    = DEFAULT_PORT,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; anything but 127.0.0.1 opens the "
                                      "page to the network.", metavar="ADDRESS")] = LOCAL_HOST,
) -> None:
    """Serve a live page of a render or batch: image in progress, stage, loss curve, time left. Ctrl-C stops it."""
    with reporting(debug=False):
        shown = watch_target(path)
        with LiveServer(shown, host, port) as server:
            warning = exposure_warning(host)
            if warning:
                say_line(warning)
            say_line(f"watching {shown.path}: {server.url} (Ctrl-C to stop)")
            threading.Event().wait()  # until Ctrl-C (reporting turns it into exit 130)
