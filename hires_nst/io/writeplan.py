"""What a run may write, decided once, before any work: the rule that keeps a user's files safe.

A render, and a whole batch, first list everything they will write (outputs with their settings,
traces, stage and contact sheets, animations, the manifest), the work dirs they will fill, and every
file they read, in a ``WritePlan``. ``check_writes`` refuses the plan, before anything is written, if

- a work dir holds files hires-nst did not write: it must be absent, empty, or ours (a marker file,
  ``WORK_MARKER``, is written into every work dir we make; a dir of an older version without it is
  recognised by holding only our files and at least one record of ours, and marked when reopened);
- a name is too long for the temp file of its atomic write (``.NAME.XXXXXXXX.part``), which would
  otherwise fail only after the render;
- a file it writes is, or links to, an input; or an input lies inside one of its work dirs.

The writers (``outputs.write_outputs``, ``batch_run.write_sheets``, the animation, ``WorkDir``) write
only what their plan named: ``outputs.written_files`` and ``batch.Batch`` hold the names both use.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from hires_nst.errors import ConfigError, OutputError
from hires_nst.io.images import nearest_existing, temp_name, write_error

WORK_MARKER = ".hires-nst-work"
MARKER_TEXT = ("A hires-nst work dir: checkpoints and records of one render. hires-nst deletes only its own "
               "files here; the folder may be deleted once the render is done.\n")
# Every file a work dir of ours holds (checkpoints.py's layout, preview.py, batch_job.py's log, the lock).
OWN_NAMES = re.compile(r"(settings|status)\.json|current\.png|preview\.jpg|trace\.csv|lock|job\.log|"
                       r"stage-\d+(\.partial-\d+)?\.(pt|png|json)|stage-\d+\.partial\.(pt|json)")
OWN_TEMP = re.compile(r"\.(?P<name>.+)\.[A-Za-z0-9_]+\.part")  # a killed write_atomically's leftover
LOG_START = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d start ")  # batch_job's first line of a job log
RECORD_BYTES = 1 << 20  # records of ours are small; a larger file is not one
SHOWN = 3  # foreign names a refusal lists


@dataclass
class WritePlan:
    """Everything one run writes and reads, each path with what it is ("output of job 'x'")."""

    writes: dict[Path, str] = field(default_factory=dict)
    work_dirs: dict[Path, str] = field(default_factory=dict)
    reads: dict[Path, str] = field(default_factory=dict)

    def write(self, path: str | os.PathLike, what: str) -> None:
        self.writes.setdefault(_absolute(path), what)

    def work_dir(self, path: str | os.PathLike, what: str) -> None:
        self.work_dirs.setdefault(_absolute(path), what)

    def read(self, path: str | os.PathLike, what: str) -> None:
        self.reads.setdefault(_absolute(path), what)

    def add(self, other: WritePlan) -> None:
        for mine, theirs in ((self.writes, other.writes), (self.work_dirs, other.work_dirs),
                             (self.reads, other.reads)):
            for path, what in theirs.items():
                mine.setdefault(path, what)


def check_writes(plan: WritePlan) -> None:
    """The one decision of what a run may write; raises before anything is written.

    ConfigError for a work dir that is not ours (the setting points at a user's folder),
    OutputError for a name too long to write, or a write over an input."""
    for folder, what in plan.work_dirs.items():
        _check_work_dir(folder, what)
    _check_name_lengths(plan)
    _check_inputs(plan)


def _check_work_dir(folder: Path, what: str) -> None:
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"{what} {folder} is a file, not a folder; give another folder")
    foreign = foreign_files(folder)
    if foreign:
        shown = ", ".join(foreign[:SHOWN]) + (f" and {len(foreign) - SHOWN} more" if len(foreign) > SHOWN else "")
        raise ConfigError(f"{what} {folder} holds files hires-nst did not write ({shown}); hires-nst works only "
                          "in a folder that is new, empty or its own: give another folder, or move those away")


def claim_work_dir(folder: Path) -> None:
    """Make ``folder`` a work dir of ours: refused if it holds files we did not write, else created
    if absent and marked (an older version's dir gets its marker here)."""
    plan = WritePlan()
    plan.work_dir(folder, "work dir")
    check_writes(plan)
    marker = Path(folder) / WORK_MARKER
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create work dir {folder}: {exc.strerror or exc}") from None
    if not marker.exists():
        try:
            marker.write_text(MARKER_TEXT, encoding="utf-8")
        except OSError as exc:
            raise write_error(marker, exc) from None


def own_files(folder: Path) -> list[Path]:
    """The files in a work dir that hires-nst wrote (all that a discard may delete)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    return [Path(e.path) for e in entries if own_name(e.name) and e.is_file(follow_symlinks=False)]


def foreign_files(folder: Path) -> list[str]:
    """Names in ``folder`` that are not ours; [] for an absent or empty folder, or one of ours."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []  # nothing there yet (a file in its place is _check_work_dir's to refuse)
    except OSError as exc:
        raise OutputError(f"cannot use work dir {folder}: {exc.strerror or exc}") from None
    names = [e.name for e in entries]
    if WORK_MARKER in names:
        return []
    strangers = [e.name for e in entries if not (own_name(e.name) and e.is_file(follow_symlinks=False))]
    if strangers or not entries or any(_our_record(Path(e.path)) for e in entries):
        return strangers
    return names  # our names, but no record of ours among them: a user's files that look like ours


def own_name(name: str) -> bool:
    """Whether hires-nst writes files of this name into a work dir (temp files of those included)."""
    temp = OWN_TEMP.fullmatch(name)
    return name == WORK_MARKER or OWN_NAMES.fullmatch(temp.group("name") if temp else name) is not None


def _our_record(path: Path) -> bool:
    """Whether a file of an unmarked dir is a record only hires-nst writes (regular files only:
    a FIFO is never opened)."""
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > RECORD_BYTES:
            return False
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if path.name == "job.log":
        return LOG_START.match(text) is not None
    if path.name == "lock":
        return text.strip().isdigit()
    if path.name in ("settings.json", "status.json"):
        try:
            data = json.loads(text)
        except ValueError:
            return False
        key = "fingerprint" if path.name == "settings.json" else "state"
        return isinstance(data, dict) and key in data
    return False


def _check_name_lengths(plan: WritePlan) -> None:
    """Every name on the way to a file (and its temp file's) must fit the filesystem's limit; a work
    dir's own name too (the files in it have short names of ours, settings.json stands for them)."""
    worst: tuple[int, str] | None = None
    limits: dict[Path, int] = {}
    written = [*plan.writes.items(), *((folder / "settings.json", what) for folder, what in plan.work_dirs.items())]
    for path, what in written:
        for name, limit, folder in _names_to_make(path, limits):
            excess = len(os.fsencode(name)) - limit
            if excess > 0 and (worst is None or excess > worst[0]):
                characters = "characters" if excess > 1 else "character"
                worst = excess, (f"{what} {path}: a name too long to write here safely ({name!r} is {limit + excess} "
                                 f"bytes, {folder} allows {limit}); choose a name at least {excess} {characters} "
                                 "shorter")
    if worst is not None:
        raise OutputError(worst[1])


def _names_to_make(path: Path, limits: dict[Path, int]) -> list[tuple[str, int, Path]]:
    """(name, limit, folder) of the temp file of ``path`` and each folder still to be made for it."""
    existing = nearest_existing(path.parent)
    if existing not in limits:
        try:
            limits[existing] = os.pathconf(existing, "PC_NAME_MAX")
        except (OSError, ValueError):  # not POSIX, or the filesystem will not say
            limits[existing] = 255
    limit = limits[existing]
    missing = path.parent.relative_to(existing).parts if path.parent != existing else ()
    return [(part, limit, existing) for part in missing] + [(temp_name(path.name), limit, existing)]


def _check_inputs(plan: WritePlan) -> None:
    """No file written may be an input (or a link to one), and no input may lie in a work dir."""
    inputs = {_identity(path): (path, what) for path, what in plan.reads.items()}
    for path, what in plan.writes.items():
        found = inputs.get(_identity(path))
        if found is not None:
            raise OutputError(f"{what} {path} would overwrite the {found[1]} {found[0]}; choose another name")
    folders = {Path(os.path.realpath(folder)): (folder, what) for folder, what in plan.work_dirs.items()}
    for path, what in plan.reads.items():
        for parent in Path(os.path.realpath(path)).parents:
            if parent in folders:
                folder, whose = folders[parent]
                raise OutputError(f"the {what} {path} is inside the {whose} {folder}, whose files hires-nst "
                                  "replaces; use a copy of it from another folder")


def _identity(path: Path) -> tuple:
    """The same for two paths to one file: device and inode when it exists, else the resolved path."""
    try:
        info = os.stat(path)
    except OSError:
        return ("path", os.path.realpath(path))
    return ("file", info.st_dev, info.st_ino)


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))
