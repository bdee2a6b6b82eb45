"""The work directory of one render: finished stages, status, and what a resume may reuse.

Layout of a work dir::

    settings.json     what the stages were rendered with (a fingerprint of inputs and settings)
    status.json       state (running / interrupted / failed / finished), the stage in progress
    stage-K.pt        stage K's image (float32) and optimiser state, loadable with weights_only
    stage-K.png       the same image, to look at
    stage-K.partial-N.pt  stage K in progress after N iterations (``--save-minutes``, ``--save-every``),
                      named by stage-K.partial.json: a resume goes on from it
    current.png       the stage in progress, to look at
    trace.csv         one row of losses, time and memory per iteration (trace.py), flushed as it goes

A stage checkpoint may be reused only if the settings fingerprint matches and every stage up to
it had the same size and iteration count, so raising --max-size on a finished render reuses
all of its stages and only adds the new ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from hires_nst import images
from hires_nst.errors import ConfigError, OutputError
from hires_nst.safety import deferred_interrupts
from hires_nst.schedule import Stage


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes: an input edited in place is a different input."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_key(stage: Stage) -> list[int]:
    return [stage.width, stage.height, stage.iterations]


class WorkDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.damaged: dict[str, str] = {}  # checkpoint files found unreadable, with why
        self._sound: set[tuple[str, int, int]] = set()  # (name, size, mtime) read back whole or written here

    def _identity(self, name: str) -> tuple[str, int, int]:
        info = self._file(name).stat()
        return name, info.st_size, info.st_mtime_ns

    def _intact(self, name: str) -> bool:
        """Whether a checkpoint reads back whole: torch.save writes a zip whose members carry CRCs,
        so a truncated file or a flipped bit shows here, before a resume relies on it. Each file is
        read once per process, and not at all if this process wrote it."""
        try:
            if self._identity(name) in self._sound:
                return True
            with zipfile.ZipFile(self._file(name)) as archive:
                bad = archive.testzip()
        except (OSError, zipfile.BadZipFile) as exc:
            bad = str(exc)
        if bad is not None:
            self.damaged[name] = f"damaged ({bad})"
            return False
        self._sound.add(self._identity(name))
        return True

    def _write_tensors(self, name: str, payload: dict[str, Tensor]) -> None:
        images.write_atomically(self._file(name), lambda f: torch.save(payload, f))
        self._sound.add(self._identity(name))

    def _file(self, name: str) -> Path:
        return self.path / name

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        payload = json.dumps(data, indent=2).encode()
        images.write_atomically(self._file(name), lambda f: f.write(payload))

    def _read_json(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._file(name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def open(self, fingerprint: dict[str, Any], schedule: Sequence[Stage], *, resume: bool, restart: bool) -> int:
        """Prepare the dir for this render; return how many leading stages are already done.

        Unfinished work is never discarded silently: it needs --resume (same settings) or --restart.
        A finished render's checkpoints are replaced by a new render unless it asks to resume.
        """
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create work dir {self.path}: {exc.strerror or exc}") from None
        previous = self._read_json("settings.json")
        status = self.status() or {}
        unfinished = bool(previous and self._stage_files() and status.get("state") != "finished")
        if restart:
            self.clear()
        elif resume and previous is not None and previous.get("fingerprint") != fingerprint:
            raise ConfigError(f"--resume: work dir {self.path} holds a render with other inputs or settings "
                              f"({_first_difference(previous.get('fingerprint', {}), fingerprint)}); "
                              "use another --work-dir, or --restart to discard it")
        elif not resume and unfinished:
            raise ConfigError(f"work dir {self.path} holds an unfinished render ({status.get('state', 'stopped')}); "
                              "add --resume to continue it, or --restart to discard it")
        elif not resume:
            self.clear()
        done = self.finished_stages(fingerprint, schedule) if resume else 0
        self._write_json("settings.json", {"fingerprint": fingerprint,
                                           "schedule": [stage_key(s) for s in schedule]})
        return done

    def _stage_files(self) -> list[Path]:
        return sorted(self.path.glob("stage-*.pt"))

    def clear(self) -> None:
        stage_files = self._stage_files() + sorted(self.path.glob("stage-*.png")) + sorted(self.path.glob("stage-*.json"))
        for path in stage_files + [self._file("current.png"), self._file("status.json")]:
            path.unlink(missing_ok=True)

    def drop_checkpoints(self) -> None:
        """Delete the stage tensors of a finished render (what a poster's work dir mostly weighs);
        the stage PNGs, records, trace and status stay."""
        for path in self._stage_files():
            path.unlink(missing_ok=True)

    def finished_stages(self, fingerprint: dict[str, Any], schedule: Sequence[Stage]) -> int:
        """Leading stages of ``schedule`` with a checkpoint made under the same settings."""
        previous = self._read_json("settings.json")
        if previous is None or previous.get("fingerprint") != fingerprint:
            return 0
        done = 0
        for stage in schedule:
            meta = self._read_json(f"stage-{stage.index}.json")
            if meta is None or meta.get("schedule") != [stage_key(s) for s in schedule[: stage.index + 1]]:
                break
            if not self._file(f"stage-{stage.index}.pt").is_file() or not self._intact(f"stage-{stage.index}.pt"):
                break
            done += 1
        return done

    def save_stage(self, stage: Stage, schedule: Sequence[Stage], image: Tensor,
                   optimizer_state: dict[str, Tensor], losses: dict[str, float]) -> None:
        """Write stage K's image (tensor first, then the record that makes it count).

        Ctrl-C or SIGTERM during the writes waits until all three are done, then stops the render.
        """
        payload = {"image": image.detach().cpu().float(), **{k: v.detach().cpu() for k, v in optimizer_state.items()}}
        with deferred_interrupts():
            self._write_tensors(f"stage-{stage.index}.pt", payload)
            images.save_image(self._file(f"stage-{stage.index}.png"), images.to_array(image))
            self._write_json(f"stage-{stage.index}.json", {
                "schedule": [stage_key(s) for s in schedule[: stage.index + 1]], "losses": losses})

    def save_progress(self, stage: Stage, schedule: Sequence[Stage], iteration: int, image: Tensor,
                      optimizer_state: dict[str, Tensor]) -> None:
        """Stage K in progress after ``iteration`` iterations: a resume goes on from here, not from
        the stage's start. The tensor goes to a new file, then the record names it, then the older
        file goes: a crash at any point leaves a record naming a complete file. Ctrl-C waits."""
        name = f"stage-{stage.index}.partial-{iteration}.pt"
        payload = {"image": image.detach().cpu().float(), **{k: v.detach().cpu() for k, v in optimizer_state.items()}}
        older = (self._read_json(f"stage-{stage.index}.partial.json") or {}).get("file")
        with deferred_interrupts():
            self._write_tensors(name, payload)
            self._write_json(f"stage-{stage.index}.partial.json", {
                "schedule": [stage_key(s) for s in schedule[: stage.index + 1]], "iteration": iteration, "file": name})
            if older and older != name:
                self._file(older).unlink(missing_ok=True)

    def progress(self, stage: Stage, schedule: Sequence[Stage]) -> int:
        """Iterations of ``stage`` saved in progress under this schedule (0: none to go on from)."""
        meta = self._read_json(f"stage-{stage.index}.partial.json")
        if meta is None or meta.get("schedule") != [stage_key(s) for s in schedule[: stage.index + 1]]:
            return 0
        name = str(meta.get("file"))
        if not self._file(name).is_file() or not self._intact(name):
            return 0
        return int(meta.get("iteration", 0))

    def load_progress(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        meta = self._read_json(f"stage-{index}.partial.json") or {}
        return self._load(str(meta.get("file")))

    def drop_progress(self, index: int) -> None:
        self._file(f"stage-{index}.partial.json").unlink(missing_ok=True)  # the record first
        for path in self.path.glob(f"stage-{index}.partial-*.pt"):
            path.unlink(missing_ok=True)

    def load_stage(self, index: int) -> tuple[Tensor, dict[str, Tensor]]:
        return self._load(f"stage-{index}.pt")

    def _load(self, name: str) -> tuple[Tensor, dict[str, Tensor]]:
        payload = torch.load(self._file(name), map_location="cpu", weights_only=True)
        image = payload.pop("image")
        return image, payload

    def stage_losses(self, index: int) -> dict[str, float]:
        return (self._read_json(f"stage-{index}.json") or {}).get("losses", {})

    def stage_image(self, index: int) -> np.ndarray:
        return images.to_array(self.load_stage(index)[0])

    def save_current(self, image: Tensor) -> None:
        images.save_image(self._file("current.png"), images.to_array(image))

    def set_status(self, state: str, **fields: Any) -> None:
        self._write_json("status.json", {"state": state, "pid": os.getpid(), **fields})

    def status(self) -> dict[str, Any] | None:
        return self._read_json("status.json")


def _first_difference(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> str:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key} was {a!r}, now {b!r}"
    return ""
