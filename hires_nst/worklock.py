"""One render per work dir: an OS file lock that the kernel releases when its process ends.

Two renders sharing checkpoints would overwrite each other's stages, and ``--restart`` would delete a
live render's work. ``flock`` on ``WORKDIR/lock`` is held for the whole render; the file holds the
holder's pid, so the refusal can name it. A process killed by any means (kill -9, a power cut)
holds nothing afterwards: there is no stale lock to clean. Where ``fcntl`` does not exist
(Windows) nothing is locked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from hires_nst.errors import OutputError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

LOCK = "lock"


class WorkLock:
    """The lock of one work dir, taken by ``acquire`` and given back by ``release`` (or by exit)."""

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK
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
            raise OutputError(f"cannot lock the work dir {self.path.parent}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise OutputError(f"work dir {self.path.parent} is in use by another render (pid {holder}); wait for "
                              "it to finish or stop it, or give this render another --work-dir") from None
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
