"""The image in progress, small and often: ``Preview`` events and the ``preview.jpg`` they refresh.

The full-size ``current.png`` comes with the progress saves (every ``--save-minutes``, 10 by
default): at print sizes writing it takes seconds. A person watching a render (a log, the live
page, a notebook) wants to see it move every few seconds, so the engine also emits a ``Preview``:
the image shrunk on its device to at most ``PREVIEW_SIZE`` px, at most every ``PREVIEW_SECONDS``,
and at each stage's start and end. ``PreviewFile`` is the sink that keeps it on disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from hires_nst.errors import OutputError
from hires_nst.events import Event, Message, Preview, Sink, null_sink

PREVIEW_NAME = "preview.jpg"
PREVIEW_SIZE = 512  # long side, px: enough to judge a render, a few tens of KB as JPEG
PREVIEW_SECONDS = 5.0


class PreviewTimer:
    """Says when the next preview is due: ``seconds`` after the last one (never when 0)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = seconds, clock
        self.last: float | None = None

    def due(self, force: bool = False) -> bool:
        """``force``: a stage's start or end, shown whenever previews are on."""
        if self.seconds <= 0:
            return False
        now = self.clock()
        if force or self.last is None or now - self.last >= self.seconds:
            self.last = now
            return True
        return False


class PreviewFile:
    """An event sink writing each ``Preview`` to ``path`` (atomically: a reader never sees half a
    file). A failed write (a full disk) is said once; the render goes on without it."""

    def __init__(self, path: Path, sink: Sink = null_sink) -> None:
        self.path, self.sink = Path(path), sink
        self.failed = False

    def __call__(self, event: Event) -> None:
        if not isinstance(event, Preview):
            return
        from hires_nst.io import images  # here: the live page reads this module's names without torch

        try:
            images.save_image(self.path, event.image)
            self.failed = False
        except OutputError as exc:
            if not self.failed:
                self.sink(Message(f"could not refresh the preview ({exc}); the render goes on"))
            self.failed = True
