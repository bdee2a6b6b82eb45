"""One render per work dir, one batch run per output folder: OS file locks that the kernel releases
when their process ends.

Two renders sharing checkpoints would overwrite each other's stages, and ``--restart`` would delete a
live render's work; two batch runs would each record the other's jobs as failed in one manifest.
``flock`` on ``WORKDIR/lock`` is held for the whole render (on ``OUTPUT_DIR/.hires-nst-batch.lock``
for the whole batch run); the file holds the holder's pid, so the refusal can name it. A process
killed by any means (kill -9, a power cut) holds nothing afterwards: there is no stale lock to
clean. Where ``fcntl`` does not exist
(Windows) nothing is locked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from hires_nst.errors import OutputError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK = "lock"
BATCH_LOCK = ".hires-nst-batch.lock"  # in a batch's output folder: one batch run writes its manifest


class ProcessLock:
    """An flock on ``path`` taken by ``acquire`` and given back by ``release`` (or by exit); ``busy``
    makes the refusal from the holder's pid, ``what`` names the locked thing when it cannot be locked."""

    def __init__(self, path: Path, what: str, busy: Callable[[str], str]) -> None:
        self.path, self.what, self.busy = Path(path), what, busy
        self.handle: IO[str] | None = None

    @property
    def held(self) -> bool:
        return self.handle is not None

    def acquire(self) -> None:
        """Take the lock, or raise OutputError naming the process that holds it."""
        if self.handle is not None or fcntl is None:
            return
        try:
            handle = open(self.path, "a+")
        except OSError as exc:
            raise OutputError(f"cannot lock {self.what}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise OutputError(self.busy(holder)) from None
        try:  # for the message above; the lock itself is the flock, not this text
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        except OSError:
            pass  # a full disk: the lock holds all the same, only the pid is not shown
        self.handle = handle

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file releases the flock
            self.handle = None

    def __enter__(self) -> ProcessLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class WorkLock(ProcessLock):
    """The lock of one work dir: one render at a time."""

    def __init__(self, folder: Path) -> None:
        super().__init__(Path(folder) / LOCK, f"the work dir {folder}", lambda holder: (
            f"work dir {folder} is in use by another render (pid {holder}); wait for it to finish or stop it, "
            "or give this render another --work-dir"))


def batch_lock(output_dir: Path) -> ProcessLock:
    """The lock of a batch's output folder: two runs would each record the other's jobs as failed."""
    return ProcessLock(Path(output_dir) / BATCH_LOCK, f"the batch's output folder {output_dir}", lambda holder: (
        f"the batch's output folder {output_dir} is in use by another batch run (pid {holder}); wait for it to "
        "finish or stop it, or give this run another --output-dir"))
