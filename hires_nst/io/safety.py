"""Never lose a night's work: checkpoint writes that a signal cannot cut short, and a disk-space check
before hours are spent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from hires_nst.config.schedule import Stage
from hires_nst.errors import DiskFullError, OutputError
from hires_nst.io.images import nearest_existing

MARGIN_BYTES = 64 * 2**20  # besides the estimate: logs, settings, temp files, other writers
MARGIN_FACTOR = 1.2  # estimates of compressed files are upper bounds, but filesystems round up
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Seconds to wait before each new try of a write that found the disk full (a stage checkpoint, the
# output): another job may finish and free its space; after the last, the render stops (resumable).
DISK_FULL_WAITS = (10.0, 60.0, 300.0)
T = TypeVar("T")


def retrying_when_full(write: Callable[[], T], what: str, report: Callable[[str], None]) -> T:
    """``write()``, tried again after each of ``DISK_FULL_WAITS`` while it raises DiskFullError
    (each failure reported); the last failure is raised. Ctrl-C during a wait stops at once."""
    for wait in DISK_FULL_WAITS:
        try:
            return write()
        except DiskFullError as exc:
            report(f"could not write {what} ({exc}); trying again in {wait:g} s: free some disk space")
        time.sleep(wait)
    return write()


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block is done, then hand it to the handler it was meant for
    (Python's default: KeyboardInterrupt; inside ``stop_requests``: a noted request).

    A checkpoint is several files (tensor, preview, record); a Ctrl-C between them would leave a
    stage that does not count. Signals already ignored stay ignored; off the main thread (where
    Python cannot install handlers) this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if pending:
        _deliver(pending[0], previous[signal.Signals(pending[0])])


def _deliver(signum: int, handler: object) -> None:
    """A held signal, handed to the handler it was meant for (``stop_requests``' notes it; Python's
    default raises KeyboardInterrupt); KeyboardInterrupt where that handler is not Python's."""
    if callable(handler):
        handler(signum, None)
        return
    raise KeyboardInterrupt


class StopRequest:
    """Whether SIGINT or SIGTERM asked the loop of ``stop_requests`` to stop (``signum``: which)."""

    def __init__(self) -> None:
        self.signum = 0

    @property
    def made(self) -> bool:
        return self.signum != 0


@contextlib.contextmanager
def stop_requests(enabled: bool = True) -> Iterator[StopRequest]:
    """Note SIGINT/SIGTERM instead of raising mid-computation: the optimiser loop stops at the end of
    the iteration in progress, whose state is then whole and saved, so a resume loses no iteration.

    A second signal while one is noted is handed to the handler that was there before (Ctrl-C twice:
    stop at once). Only signals whose handler is Python's (the default SIGINT one raises
    KeyboardInterrupt; the CLI's SIGTERM one too) are noted: SIG_DFL and SIG_IGN stay as they are (a
    spawned rank dies with its launcher, never waits for an iteration that needs the others).
    Disabled (``enabled`` False) or off the main thread, the request is never made.
    """
    request = StopRequest()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def note(signum: int, frame: object) -> None:
        if request.made:
            _deliver(signum, previous[signal.Signals(signum)])
        request.signum = signum

    for sig, handler in previous.items():
        if callable(handler):
            signal.signal(sig, note)
    try:
        yield request
    finally:
        for sig, handler in previous.items():
            if callable(handler):
                signal.signal(sig, handler)


def stage_checkpoint_bytes(stage: Stage, optimizer: str) -> int:
    """A stage's files in the work dir: float32 image (+ two Adam moments) and an 8-bit PNG preview."""
    tensors = 3 if optimizer in ("adam", "adamw") else 1
    return stage.pixels * 3 * (4 * tensors + 1)


def output_bytes(width: int, height: int, bit_depth: int) -> int:
    """Upper bound of a written image: uncompressed samples (deflate and JPEG only shrink them)."""
    return width * height * 3 * (2 if bit_depth == 16 else 1)


def render_needs(output: Path, work_dir: Path, schedule: Sequence[Stage], optimizer: str, bit_depth: int,
                 stage_sheet: bool = False) -> dict[Path, int]:
    """Bytes a render will write, by folder: the output beside its folder, checkpoints in the work dir."""
    last = schedule[-1]
    image = output_bytes(last.width, last.height, bit_depth)
    if stage_sheet:
        image += output_bytes(256 * len(schedule) * 2, 300, 8)
    # Every stage, the largest one's progress twice (a new save is complete before the old one goes),
    # and current.png.
    stages = sum(stage_checkpoint_bytes(s, optimizer) for s in schedule)
    checkpoints = stages + 2 * stage_checkpoint_bytes(last, optimizer) + output_bytes(last.width, last.height, 8)
    return {output.parent: image, work_dir: checkpoints}


def check_free_space(needs: Mapping[Path, int]) -> None:
    """Raise OutputError if a filesystem lacks room for what will be written to it (with a margin).

    Folders on the same filesystem share its free space, so their needs are added up.
    """
    by_device: dict[int, tuple[Path, int]] = {}
    for folder, size in needs.items():
        existing = nearest_existing(folder)
        device = os.stat(existing).st_dev
        first, total = by_device.get(device, (existing, 0))
        by_device[device] = (first, total + size)
    for folder, size in by_device.values():
        free = shutil.disk_usage(folder).free
        wanted = int(size * MARGIN_FACTOR) + MARGIN_BYTES
        if free < wanted:
            raise OutputError(f"not enough disk space in {folder}: this needs about {_mb(wanted)} "
                              f"(images and checkpoints, with a margin), {_mb(free)} is free; "
                              "free some space or choose another output folder / --work-dir")


def _mb(size: int) -> str:
    return f"{size / 2**20:,.0f} MB" if size < 2**30 * 10 else f"{size / 2**30:,.1f} GB"

