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
    lock              held (flock) by the render using the dir; holds its pid (worklock.py)
    .hires-nst-work   the marker: this folder is ours (writeplan.py); hires-nst works in no other
                      non-empty folder, and deletes only the files named here

A stage checkpoint may be reused only if the settings fingerprint matches and every stage up to
it had the same size and iteration count, so raising --max-size on a finished render reuses
all of its stages and only adds the new ones.

Over 300 lines on purpose: the work dir's files (stages, progress, status, kept files) behind one class.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hires_nst.config.schedule import Stage
from hires_nst.errors import ConfigError, OutputError
from hires_nst.io import images
from hires_nst.io.safety import deferred_interrupts, retrying_when_full
from hires_nst.io.worklock import WorkLock
from hires_nst.io.writeplan import claim_work_dir, own_name

_PARTIAL = re.compile(r"stage-(\d+)\.partial-\d+\.pt")


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes: an input edited in place is a different input."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stage_key(stage: Stage) -> list[int]:
    return [stage.width, stage.height, stage.iterations]


def _first_stage(key: Any) -> str:
    return f"{key[0]}x{key[1]}, {key[2]} iterations" if isinstance(key, list) and len(key) == 3 else repr(key)


class WorkDir:
    """A render's work dir. ``say`` receives what the render should be told (a failed status
    write, a full disk being waited out); ``open`` locks the dir for this process until ``close``."""

    def __init__(self, path: Path, say: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.say = say or (lambda text: None)
        self.damaged: dict[str, str] = {}  # checkpoint files found unreadable, with why
        self._sound: set[tuple[str, int, int]] = set()  # (name, size, mtime) read back whole or written here
        self.lock = WorkLock(self.path)
        self.fingerprint: dict[str, Any] = {}
        self.schedule: Sequence[Stage] = ()
        self.began, self.earlier = time.monotonic(), 0.0  # the render's clock: this run, and runs before
        self.reopened: str | None = None  # see ``open``: a finished render found here, and why it is not reused

    def seconds(self) -> float:
        """The render's time so far: this run's, plus that of the earlier runs whose work it goes on from."""
        return self.earlier + time.monotonic() - self.began

    def has_work(self) -> bool:
        """Whether an earlier render left anything here that --resume could go on from."""
        return self._file("settings.json").exists() or bool(self._stage_files())

    def close(self) -> None:
        self.lock.release()

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
            data = json.loads(self._file(name).read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        return data if isinstance(data, dict) else None

    def open(self, fingerprint: dict[str, Any], schedule: Sequence[Stage], *, resume: bool, restart: bool,
             inputs: Sequence[str] = ()) -> int:
        """Lock the dir and prepare it for this render; return how many leading stages are already done.

        Work is never discarded silently: unfinished work needs --resume (same settings and first
        stage) or --restart; --resume with nothing to resume is an error. A finished render's
        stages are reused as far as they fit this render (same inputs and settings, same sizes),
        unless it asks to --restart; ``reopened`` then says why none fit ('' when some did) for the
        render to tell (None: no finished render was found, or a flag decided). ``inputs`` names the
        input files of the fingerprint, for the message when one changed.
        """
        if resume and restart:
            raise ConfigError("--resume and --restart contradict each other (--restart discards what --resume "
                              "would continue); give one of them")
        claim_work_dir(self.path)  # refused if it holds a user's files; before the lock writes its file
        self.lock.acquire()  # before anything is read or deleted: another render may be using the dir
        for temp in self._own_temp_files():  # a killed process's half-written file; nobody else writes here
            temp.unlink(missing_ok=True)
        status = self.status() or {}
        finished = status.get("state") == "finished"
        unfinished = bool(self._stage_files() or self._own("stage-*.partial.json")) and not finished
        reopened = finished and not resume and not restart
        if restart:
            self.clear()
        elif resume:
            self._check_resumable(fingerprint, schedule, inputs)
        elif unfinished:
            raise ConfigError(f"work dir {self.path} holds an unfinished render ({status.get('state', 'stopped')}); "
                              "add --resume to continue it, or --restart to discard it")
        elif not reopened:
            self.clear()
        done = self.finished_stages(fingerprint, schedule) if resume or reopened else 0
        self.reopened = self._why_not_reused(fingerprint, schedule, inputs) if reopened and not done else (
            "" if reopened else None)
        if reopened and not done:
            self.clear()  # another render's stages: none may count for this one's fingerprint
        self._drop_stale_progress(schedule, done)
        if (resume or reopened) and done < len(schedule):
            went = self.progress(schedule[done], schedule)
            record = self._read_json(f"stage-{done}.partial.json") if went else (
                self._read_json(f"stage-{done - 1}.json") if done else None)
            self.earlier = float((record or {}).get("seconds", 0.0))
        elif resume or reopened:
            self.earlier = float((self._read_json(f"stage-{done - 1}.json") or {}).get("seconds", 0.0))
        self.fingerprint, self.schedule = fingerprint, tuple(schedule)
        self._write_json("settings.json", {"fingerprint": fingerprint,
                                           "schedule": [stage_key(s) for s in schedule]})
        return done

    def _why_not_reused(self, fingerprint: dict[str, Any], schedule: Sequence[Stage], inputs: Sequence[str]) -> str:
        """Why none of a finished render's stages fit this one."""
        settings = self._read_json("settings.json") or {}
        previous = settings.get("fingerprint")
        if previous != fingerprint:
            return f"other inputs or settings: {_describe_difference(previous or {}, fingerprint, inputs)}"
        if not self._stage_files():
            return "its stage checkpoints were not kept: --no-keep-checkpoints"
        first = (settings.get("schedule") or [None])[0]
        if first != stage_key(schedule[0]):
            return f"its first stage was {_first_stage(first)}, now {_first_stage(stage_key(schedule[0]))}"
        return "its first stage's checkpoint cannot be read"

    def _check_resumable(self, fingerprint: dict[str, Any], schedule: Sequence[Stage], inputs: Sequence[str]) -> None:
        """Refuse a --resume that would not go on from this dir's work (it would start afresh)."""
        settings = self._file("settings.json")
        if not settings.exists():
            raise ConfigError(f"--resume: no render to resume in {self.path} (no settings.json there); "
                              "run without --resume to start afresh, or give the --work-dir of the render")
        previous = self._read_json("settings.json")
        if previous is None:
            raise ConfigError(f"--resume: {settings} cannot be read, so the work there cannot be matched to "
                              "this render; use --restart to discard it, or another --work-dir")
        if previous.get("fingerprint") != fingerprint:
            why = _describe_difference(previous.get("fingerprint", {}), fingerprint, inputs)
            raise ConfigError(f"--resume: work dir {self.path} holds a render with other inputs or settings "
                              f"({why}); use another --work-dir, or --restart to discard it")
        saved = previous.get("schedule") or [(self._read_json("stage-0.json") or {}).get("schedule", [None])[0]]
        if saved and saved[0] is not None and saved[0] != stage_key(schedule[0]):
            raise ConfigError(f"--resume: work dir {self.path} holds a render whose first stage was "
                              f"{_first_stage(saved[0])}, now {_first_stage(stage_key(schedule[0]))} "
                              "(--min-size, --iterations or --max-size changed); nothing there could be reused: "
                              "use another --work-dir, or --restart to discard it")

    def _stage_files(self) -> list[Path]:
        return self._own("stage-*.pt")

    def _own(self, pattern: str) -> list[Path]:
        """The files matching ``pattern`` that are ours: a user's ``stage-final.png`` is never touched."""
        return sorted(p for p in self.path.glob(pattern) if own_name(p.name))

    def _own_temp_files(self) -> list[Path]:
        return [p for p in images.temp_files(self.path) if own_name(p.name)]

    def _drop_stale_progress(self, schedule: Sequence[Stage], done: int) -> None:
        """Progress files that no resume can use (kill -9 between a save and the removal of what it
        replaced): those of finished stages, and any file its stage's record does not name."""
        named = (self._read_json(f"stage-{done}.partial.json") or {}).get("file") if done < len(schedule) else None
        for path in self._own("stage-*.partial-*.pt"):
            match = _PARTIAL.fullmatch(path.name)
            if match is None or int(match.group(1)) != done or path.name != named:
                path.unlink(missing_ok=True)
        for path in self._own("stage-*.partial.json"):
            if path.name != f"stage-{done}.partial.json":
                path.unlink(missing_ok=True)

    def finish(self) -> None:
        """A finished render needs no progress saves nor temp files: only its stages stay."""
        for path in [*self._own("stage-*.partial*"), *self._own_temp_files()]:
            path.unlink(missing_ok=True)

    def clear(self) -> None:
        stage_files = self._stage_files() + self._own("stage-*.png") + self._own("stage-*.json")
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

        def write() -> None:
            with deferred_interrupts():
                self._write_tensors(f"stage-{stage.index}.pt", payload)
                images.save_image(self._file(f"stage-{stage.index}.png"), images.to_array(image))
                self._write_json(f"stage-{stage.index}.json", {
                    "schedule": [stage_key(s) for s in schedule[: stage.index + 1]], "losses": losses,
                    "seconds": round(self.seconds(), 3)})

        # A full disk: wait for room a while (the stage lives only in memory), then stop resumably.
        retrying_when_full(write, f"stage {stage.index + 1}'s checkpoint", self.say)

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
                "schedule": [stage_key(s) for s in schedule[: stage.index + 1]], "iteration": iteration, "file": name,
                "seconds": round(self.seconds(), 3)})
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
        for path in self._own(f"stage-{index}.partial-*.pt"):
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
        """Record the render's state. Never fatal: a "running" that cannot be written is reported and
        the render goes on; any other state must not leave "running" behind, so on a full disk it
        overwrites the old file in place (no new blocks needed), or at worst removes it."""
        data = {"state": state, "pid": os.getpid(), **fields}
        try:
            self._write_json("status.json", data)
            return
        except OutputError as exc:
            if state == "running":
                self.say(f"could not update {self._file('status.json')} ({exc}); the render goes on")
                return
        payload = json.dumps(data).encode()
        try:
            with open(self._file("status.json"), "r+b") as handle:
                handle.write(payload)
                handle.truncate(len(payload))
        except OSError:
            self._file("status.json").unlink(missing_ok=True)

    def kept(self) -> tuple[int, int]:
        """(finished stages, iterations saved of the next one) that a --resume would go on from."""
        schedule = self.schedule
        done = self.finished_stages(self.fingerprint, schedule) if schedule else 0
        return done, self.progress(schedule[done], schedule) if done < len(schedule) else 0

    def kept_text(self) -> str:
        done, went = self.kept()
        saved = [f"{done} finished stage(s)"] if done else []
        if went:
            saved.append(f"stage {done + 1} at iteration {went}/{self.schedule[done].iterations}")
        return " and ".join(saved) + " kept" if saved else "nothing finished yet"

    def status(self) -> dict[str, Any] | None:
        return self._read_json("status.json")


def _describe_difference(old: dict[str, Any], new: dict[str, Any], inputs: Sequence[str]) -> str:
    """The first difference of two fingerprints; a changed input file by its name, not its digest."""
    before, now = old.get("inputs"), new.get("inputs")
    if before != now and isinstance(before, list) and isinstance(now, list):
        if len(before) == len(now) == len(inputs):
            changed = [name for name, a, b in zip(inputs, before, now, strict=True) if a != b]
            return f"{' and '.join(changed)} changed since that render (its bytes differ)"
        return f"the input files changed: {len(now)} now, {len(before)} then"
    return _first_difference(old, new)


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
