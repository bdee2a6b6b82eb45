"""Named presets: TOML files of settings, shipped in the package (``hires_nst/config/preset_files``, which the
top-level ``presets/`` folder links to) or given by path.

A preset holds a one-line ``description`` and the same tables as any settings layer (``[pyramid]``,
``[loss]``, ``[optim]``, ``[model]``, ``[device]``, ``[output]``, ``[print]``, ``[input]``). It sits
between the defaults and the command line: dataclass defaults < preset < flags.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from hires_nst.config.options import did_you_mean
from hires_nst.config.printsize import describe
from hires_nst.config.settings import SECTIONS, RenderConfig, load_toml, resolve
from hires_nst.errors import ConfigError

SUFFIX = ".toml"


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    description: str
    layer: dict[str, dict[str, Any]]  # {section: {key: value}}

    @property
    def source(self) -> str:
        """How errors name it: the file, so that the bad line can be found."""
        return f"preset {self.path}"

    def config(self) -> RenderConfig:
        try:
            return resolve((self.source, self.layer))
        except ConfigError as exc:  # range checks name the flag only: add the file
            if self.source in str(exc):
                raise
            raise ConfigError(f"{self.source}: {exc}", setting=exc.setting, problem=exc.problem,
                              source=exc.source or self.source) from None


def builtin_dir() -> Path:
    return Path(str(resources.files("hires_nst.config") / "preset_files"))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob(f"*{SUFFIX}"))


def find_preset(name_or_path: str | Path) -> Path:
    """A built-in name (``preview``), or a path to a TOML file (anything with a / or ending in .toml)."""
    text = str(name_or_path)
    if "/" in text or "\\" in text or text.endswith(SUFFIX):
        path = Path(text).expanduser()
        try:
            mode = path.stat().st_mode
        except OSError:
            raise ConfigError(f"preset file not found: {path}") from None
        if not stat.S_ISREG(mode):  # never opened: a named pipe would wait for a writer forever
            raise ConfigError(f"preset {path} is {_kind(mode)}, not a settings file")
        return path
    path = builtin_dir() / f"{text}{SUFFIX}"
    if not path.is_file():
        hint = did_you_mean(text, builtin_names())
        raise ConfigError(f"unknown preset {text!r}; {hint + ' ' if hint else ''}built-in presets: "
                          f"{', '.join(builtin_names())} (or give a path to a .toml file)")
    return path


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"))
    return next((name for test, name in kinds if test(mode)), "a special file")


def load_preset(name_or_path: str | Path) -> Preset:
    """Read and check a preset: unknown keys and bad values are errors naming the key and the file."""
    path = find_preset(name_or_path)
    data = load_toml(path)
    description = data.pop("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"preset {path}: description must be a string, got {description!r}")
    for key, value in data.items():
        if key not in SECTIONS:
            hint = did_you_mean(key, SECTIONS)
            raise ConfigError(f"preset {path}: unknown key {key!r}; {hint + ' ' if hint else ''}a preset holds "
                              "description and the tables " + ", ".join(f"[{s}]" for s in SECTIONS))
        if not isinstance(value, dict):
            raise ConfigError(f"preset {path}: {key} must be a table ([{key}]), got {value!r}")
    preset = Preset(path.stem, path, description, data)
    preset.config()  # validates: unknown settings, wrong types, out-of-range values
    return preset


def resolve_with_preset(preset: str | Path | None, *layers: tuple[str, Mapping[str, Any]]) -> RenderConfig:
    """The one order of settings: dataclass defaults < ``preset`` (a built-in name or a .toml file) <
    each of ``layers`` in turn (``(source, {section: {key: value}})``: a file, flags, keywords)."""
    if preset is None:
        return resolve(*layers)
    loaded = load_preset(preset)
    return resolve((loaded.source, loaded.layer), *layers)


def builtin_presets() -> list[Preset]:
    return [load_preset(name) for name in builtin_names()]


def output_size(config: RenderConfig) -> str:
    """What a preset makes, in one phrase: a paper at a DPI, or a long side in pixels."""
    printing = config.print
    if printing.print_size:
        return f"{describe(printing.print_size, printing.dpi)} ({printing.fit})"
    return f"{config.pyramid.max_size} px long side"


def to_toml(config: RenderConfig, preset_layer: dict[str, dict[str, Any]]) -> str:
    """The resolved settings as TOML; values the preset set are marked ``# preset``."""
    lines: list[str] = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            mark = "  # preset" if key in preset_layer.get(section, {}) else ""
            lines.append(f"{key} = {_toml_value(value)}{mark}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return repr(value)
