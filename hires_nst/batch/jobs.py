"""Batch job files: renders and grids read from TOML.

A job file holds ``output_dir``, a ``[defaults]`` table (``preset``, ``overrides``), ``[[job]]``
entries (``name``, ``content``, ``styles``, ``preset``, ``output``, ``overrides``) and ``[[grid]]``
entries (``name``, ``contents``, ``styles``, ``preset``, ``overrides``, ``vary``; a grid's contents
and styles may be patterns such as ``photos/*.jpg``, one row or column per image); ``overrides`` is
``{section: {setting: value}}``, as in a preset. Paths in a job file are relative to the file's
folder. Every output lands inside the batch's output folder (``output_dir``, default ``<job file
name>-out`` beside the job file): an output that would escape it (``../x.png``, an absolute path
elsewhere, a link out) is refused. Each job gets its work dir ``OUTPUT_DIR/work/<name>``. Settings
of a job, lowest first: defaults < preset (the job's, or ``[defaults] preset``) < ``[defaults]``
tables < the job's tables < a grid cell's values. All settings are checked when the file is read, so
a typo fails the batch before anything runs; missing or broken images fail only their own job, when
it runs.

Over 300 lines on purpose: the job file's schema: every key of a job and a grid is parsed and checked here.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hires_nst.config.presets import load_preset
from hires_nst.config.regionspec import mask_files
from hires_nst.config.renderjob import RenderJob
from hires_nst.config.settings import OUTPUT_FORMATS, SECTIONS, VIDEO_SUFFIXES, RenderConfig, load_toml, resolve
from hires_nst.engine.outputs import output_path
from hires_nst.errors import ConfigError, InputError
from hires_nst.io.images import FORMATS

TOP_KEYS = ("output_dir", "defaults", "job", "grid")
JOB_KEYS = ("name", "content", "styles", "preset", "output", "overrides")
GRID_KEYS = ("name", "contents", "styles", "preset", "overrides", "vary")
DEFAULTS_KEYS = ("preset", "overrides")
WORK = "work"  # OUTPUT_DIR/work/<job name>: checkpoints and log of each job
MANIFEST = "manifest.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+=-]*$")
# What a pattern in a grid's contents or styles picks up (inputs may be any of these; outputs are PNG/JPEG/TIFF).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp")


@dataclass(frozen=True)
class Cell:
    """Where a grid job sits on its grid's contact sheet."""

    grid: str
    row: int
    col: int
    row_label: str
    col_label: str


@dataclass(frozen=True)
class BatchJob:
    name: str
    render: RenderJob  # absolute paths; output inside the output dir; its own work dir
    spec: str  # digest of everything the job renders from: a changed job is rendered afresh
    cell: Cell | None = None


@dataclass(frozen=True)
class Grid:
    name: str
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    sheet: Path


@dataclass(frozen=True)
class Batch:
    job_file: Path
    output_dir: Path
    jobs: tuple[BatchJob, ...]
    grids: tuple[Grid, ...] = ()

    @property
    def manifest(self) -> Path:
        return self.output_dir / MANIFEST


def load_batch(path: str | Path, output_dir: str | Path | None = None) -> Batch:
    """Read a job file; ``output_dir`` (e.g. from the command line) overrides the file's."""
    path = Path(path).expanduser().resolve()
    if path.exists() and not path.is_file():  # a FIFO would block the read for ever
        raise InputError(f"job file is not a file: {path}")
    data = load_toml(path)
    _check_keys(data, TOP_KEYS, f"{path}")
    base = path.parent
    given = data.get("output_dir", f"{path.stem}-out")
    if not isinstance(given, str):
        raise ConfigError(f"{path}: output_dir must be a folder name (a string), got {given!r}")
    folder = Path(output_dir).expanduser() if output_dir else base / Path(given).expanduser()
    reader = _Reader(path, base, folder.resolve(), _table(data.get("defaults", {}), f"{path} [defaults]"))
    for index, entry in enumerate(_tables(data.get("job", []), f"{path} [[job]]")):
        reader.add_job(entry, index)
    for index, entry in enumerate(_tables(data.get("grid", []), f"{path} [[grid]]")):
        reader.add_grid(entry, index)
    if not reader.jobs:
        raise ConfigError(f"{path}: no [[job]] or [[grid]] entries")
    return Batch(path, reader.output_dir, tuple(reader.jobs), tuple(reader.grids))


class _Reader:
    """Turns job and grid entries into BatchJobs, checking names, paths and settings as it goes."""

    def __init__(self, path: Path, base: Path, output_dir: Path, defaults: dict[str, Any]) -> None:
        self.path, self.base, self.output_dir = path, base, output_dir
        _check_keys(defaults, DEFAULTS_KEYS, f"{path} [defaults]")
        self.defaults = defaults
        self.jobs: list[BatchJob] = []
        self.grids: list[Grid] = []
        self.outputs: dict[Path, str] = {}
        self.names: set[str] = set()  # of jobs and grids: a set, so that 10,000 jobs are read in linear time

    def add_job(self, entry: dict[str, Any], index: int) -> None:
        where = f"{self.path} [[job]] {entry.get('name', f'#{index + 1}')!r}"
        _check_keys(entry, JOB_KEYS, where)
        content = self._file(_required(entry, "content", where), where)
        styles = tuple(self._file(s, where) for s in _strings(_required(entry, "styles", where), f"{where} styles"))
        output = entry.get("output")
        if output is not None and not isinstance(output, str):
            raise ConfigError(f"{where}: output must be a file name, got {output!r}")
        default_name = Path(output).stem if output else f"{content.stem}-" + "+".join(s.stem for s in styles)
        name = self._name(entry.get("name"), default_name, where)
        layers = [*self._base_layers(entry.get("preset"), where), (where, self._sections(entry, where))]
        self._add(name, content, styles, layers, output, name, where)

    def add_grid(self, entry: dict[str, Any], index: int) -> None:
        where = f"{self.path} [[grid]] {entry.get('name', f'#{index + 1}')!r}"
        _check_keys(entry, GRID_KEYS, where)
        grid = self._name(entry.get("name"), f"grid{index + 1}", where)
        contents = [path for c in _strings(_required(entry, "contents", where), f"{where} contents")
                    for path in self._matches(c, where)]
        styles = [style for item in _list(_required(entry, "styles", where), f"{where} styles")
                  for style in self._style_columns(item, where)]
        vary = _vary(_table(entry.get("vary", {}), f"{where} vary"), where)
        layers = [*self._base_layers(entry.get("preset"), where), (where, self._sections(entry, where))]
        combos = list(itertools.product(*(values for _, values in vary))) or [()]
        cols = [(style, combo) for style in styles for combo in combos]
        col_labels = [" ".join(["+".join(s.stem for s in style), *_combo_labels(vary, combo)]) for style, combo in cols]
        for row, content in enumerate(contents):
            for col, ((style, combo), label) in enumerate(zip(cols, col_labels, strict=True)):
                name = self._name(None, f"{grid}-{content.stem}-{label.replace(' ', '-')}", where)
                cell_layer = (f"{where} vary", _vary_layer(vary, combo))
                self._add(name, content, style, [*layers, cell_layer], None, f"{grid}/{name[len(grid) + 1:]}", where,
                          Cell(grid, row, col, content.stem, label))
        sheet = self._inside(f"{grid}-sheet.png", where)
        if sheet in self.outputs:
            raise ConfigError(f"{where}: the contact sheet {sheet} is also the output of {self.outputs[sheet]}")
        self.outputs[sheet] = where
        self.grids.append(Grid(grid, tuple(c.stem for c in contents), tuple(col_labels), sheet))

    def _add(self, name: str, content: Path, styles: tuple[Path, ...], layers: list, output: str | None,
             default_stem: str, where: str, cell: Cell | None = None) -> None:
        """One render; without an ``output`` it is ``<default_stem>.<format>`` in the output dir."""
        work_dir = self.output_dir / WORK / name
        try:
            config = resolve(*layers, ("batch", {"output": {"work_dir": str(work_dir)}}))
        except ConfigError as exc:  # range checks name the flag only: add the job and the file
            if str(self.path) in str(exc):
                raise
            raise ConfigError(f"{where}: {exc}") from None
        suffix = OUTPUT_FORMATS.get(config.output.format.lower(), ".png")
        target = output_path(self._inside(output if output is not None else f"{default_stem}{suffix}", where),
                             config.output.format)
        if target in self.outputs:
            raise ConfigError(f"{where}: output {target} is also the output of {self.outputs[target]}")
        self.outputs[target] = where
        config = self._animation(config, name, where)
        render = RenderJob(content, styles, target, config, resume=True)
        self.jobs.append(BatchJob(name, render, _spec(render), cell))

    def _base_layers(self, preset: Any, where: str) -> list[tuple[str, dict[str, Any]]]:
        layers: list[tuple[str, dict[str, Any]]] = []
        chosen = preset if preset is not None else self.defaults.get("preset")
        if chosen is not None:
            if not isinstance(chosen, str):
                raise ConfigError(f"{where}: preset must be a name or a path, got {chosen!r}")
            is_path = "/" in chosen or chosen.endswith(".toml")
            try:
                loaded = load_preset(self.base / Path(chosen).expanduser() if is_path else chosen)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            layers.append((loaded.source, loaded.layer))
        layers.append((f"{self.path} [defaults]", self._sections(self.defaults, f"{self.path} [defaults]")))
        return layers

    def _sections(self, entry: Mapping[str, Any], where: str) -> dict[str, Any]:
        """The entry's ``overrides`` ({section: {key: value}}), file settings made relative to the job file."""
        overrides = _table(entry.get("overrides", {}), f"{where} overrides")
        for key in overrides:
            if key not in SECTIONS:
                raise ConfigError(f"{where}: unknown section overrides.{key}; known: {', '.join(SECTIONS)}")
        layer = {key: dict(_table(value, f"{where} overrides.{key}")) for key, value in overrides.items()}
        if "work_dir" in layer.get("output", {}):
            raise ConfigError(f"{where}: output.work_dir cannot be set in a batch; each job's work dir is "
                              f"{self.output_dir / WORK}/<job name>")
        for section, key, keywords in (("optim", "init", ("content", "noise")),
                                       ("model", "weights", ("original", "torchvision"))):
            value = layer.get(section, {}).get(key)
            if isinstance(value, str) and value not in keywords:
                layer[section][key] = str(self.base / Path(value).expanduser())
        loss = layer.get("loss", {})
        if isinstance(loss.get("mask"), str) and loss["mask"]:
            loss["mask"] = str(self.base / Path(loss["mask"]).expanduser())
        if isinstance(loss.get("region"), list):  # MASK.png:STYLE: the mask file, relative to the job file
            loss["region"] = [self._region(r) for r in loss["region"]]
        return layer

    def _region(self, region: Any) -> Any:
        if not isinstance(region, str) or "=" in region or ":" not in region:
            return region  # COLOUR=STYLE (with --mask), or malformed: config's check names it
        mask, _, rest = region.partition(":")
        return f"{self.base / Path(mask).expanduser()}:{rest}"

    def _file(self, value: Any, where: str) -> Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: image paths must be strings, got {value!r}")
        return self.base / Path(value).expanduser()

    def _matches(self, value: Any, where: str) -> list[Path]:
        """A path, or a pattern (``photos/*.jpg``) for every image it matches, sorted by name; a
        pattern that matches no image stops the batch before anything runs."""
        path = self._file(value, where)
        if not glob.has_magic(value):
            return [path]
        hits = (self.base / hit for hit in glob.glob(str(Path(value).expanduser()), root_dir=self.base))
        found = sorted(p for p in hits if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not found:
            raise ConfigError(f"{where}: {value!r} matches no image ({', '.join(IMAGE_SUFFIXES)}) in {path.parent}")
        return found

    def _style_columns(self, item: Any, where: str) -> list[tuple[Path, ...]]:
        """A grid's ``styles`` entry: one style, a pattern (a column per match), or a blend list."""
        if isinstance(item, list):
            if any(isinstance(s, str) and glob.has_magic(s) for s in item):
                raise ConfigError(f"{where}: a blend of styles lists its images by name; patterns "
                                  f"(*, ?, [) only stand alone in styles, got {item!r}")
            return [tuple(self._file(s, where) for s in _strings(item, f"{where} styles"))]
        return [(path,) for path in self._matches(item, where)]

    def _animation(self, config: RenderConfig, name: str, where: str) -> RenderConfig:
        """A job's ``animate`` file, confined like its output: relative to the output dir, inside it,
        and its own (``{name}`` in the value becomes the job's name, so one value serves every job)."""
        if not config.output.animate:
            return config
        target = self._inside(config.output.animate.replace("{name}", name), where, "animate", VIDEO_SUFFIXES)
        if target in self.outputs:
            raise ConfigError(f"{where}: animate {target} is also written by {self.outputs[target]}; give each job "
                              'its own, e.g. animate = "anim/{name}.gif"')
        self.outputs[target] = f"{where} (its animation)"
        return dataclasses.replace(config, output=dataclasses.replace(config.output, animate=str(target)))

    def _inside(self, output: Any, where: str, what: str = "output",
                suffixes: Sequence[str] = tuple(FORMATS)) -> Path:
        """``output`` under the output dir, refused if it would land anywhere else."""
        if not isinstance(output, str) or not output:
            raise ConfigError(f"{where}: {what} must be a file name, got {output!r}")
        target = (self.output_dir / Path(output).expanduser()).resolve()
        if not target.is_relative_to(self.output_dir) or target == self.output_dir:
            raise ConfigError(f"{where}: {what} {output!r} is outside the batch's output folder "
                              f"{self.output_dir}; everything a job writes must stay inside it")
        if target.is_relative_to(self.output_dir / WORK) or target == self.output_dir / MANIFEST:
            raise ConfigError(f"{where}: {what} {output!r} is reserved for the batch's work dirs and manifest")
        if target.suffix and target.suffix.lower() not in suffixes:
            raise ConfigError(f"{where}: {what} {output!r} has an unsupported extension; use "
                              f"{', '.join(sorted(set(suffixes)))}")
        return target

    def _name(self, given: Any, default: str, where: str) -> str:
        if given is None:
            name = re.sub(r"[^A-Za-z0-9._+=-]+", "-", default).strip("-.") or "job"
        elif isinstance(given, str) and _SAFE_NAME.match(given):
            name = given
        else:
            raise ConfigError(f"{where}: name must be letters, digits and . _ + = - (no spaces or slashes), "
                              f"got {given!r}")
        if name in self.names:
            raise ConfigError(f"{where}: two jobs are named {name!r}; give them distinct names")
        self.names.add(name)
        return name


def _spec(job: RenderJob) -> str:
    """Digest of the job as written and of its input files' size and time: a job whose settings or
    images changed is no longer 'finished'."""
    def stat(path: Path) -> list[int] | None:
        try:
            info = path.stat()
        except OSError:
            return None
        return [info.st_size, info.st_mtime_ns]

    loss = job.config.loss
    files = [job.content, *job.styles, *mask_files(loss.mask, loss.region).values()]
    data = {"files": [[str(p), stat(p)] for p in files], "output": str(job.output), "config": job.config.to_dict()}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _vary(table: Mapping[str, Any], where: str) -> list[tuple[tuple[str, str], list[Any]]]:
    """``{"loss.style_weight": [5, 50]}`` -> ``[(("loss", "style_weight"), [5, 50])]``."""
    vary = []
    for dotted, values in table.items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or not key:
            raise ConfigError(f"{where} vary: {dotted!r} must be section.setting, e.g. loss.style_weight")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where} vary: {dotted} needs a non-empty list of values, got {values!r}")
        vary.append(((section, key), values))
    return vary


def _vary_layer(vary: Sequence[tuple[tuple[str, str], list[Any]]], combo: Sequence[Any]) -> dict[str, Any]:
    layer: dict[str, dict[str, Any]] = {}
    for ((section, key), _), value in zip(vary, combo, strict=True):
        layer.setdefault(section, {})[key] = value
    return layer


def _combo_labels(vary: Sequence[tuple[tuple[str, str], list[Any]]], combo: Sequence[Any]) -> list[str]:
    return [f"{key}={_short(value)}" for ((_, key), _), value in zip(vary, combo, strict=True)]


def _short(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _check_keys(table: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}; known: {', '.join(known)}")


def _required(entry: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in entry:
        raise ConfigError(f"{where}: {key} is missing")
    return entry[key]


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table, got {value!r}")
    return value


def _tables(value: Any, where: str) -> list[dict[str, Any]]:
    return [_table(v, where) for v in _list(value, where)]


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(f"{where} must be a list, got {value!r}")
    return value


def _strings(value: Any, where: str) -> list[str]:
    """One path or a list of them."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(f"{where} must not be empty")
    return items
