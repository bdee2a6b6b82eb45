"""The command that continues a render, for messages and status.json: the options the user gave,
with every file path made absolute, so that it works from any folder (the work dir is absolute too)."""

from __future__ import annotations

import os
import shlex
from typing import Any

GIVEN = ("COMMANDLINE", "ENVIRONMENT")  # click's ParameterSource names (typer ships its own click)
ALWAYS_PATHS = {"work_dir", "animate"}
# Options that take a keyword or a file: only a value that names an existing file is a path.
KEYWORDS = {"init": ("content", "noise"), "weights": ("original", "torchvision", "random"), "preset": ()}
DROPPED = {"resume", "restart"}  # the command resumes; --restart would discard what it resumes


def resume_command(ctx: Any, program: str = "hires-nst") -> str:
    """``hires-nst render /abs/photo.jpg /abs/painting.jpg --output /abs/out.png ... --resume``."""
    words = [program, ctx.info_name or "render"]
    for param in ctx.command.params:
        name = param.name or ""
        source = ctx.get_parameter_source(name)
        if name in DROPPED or getattr(source, "name", None) not in GIVEN:
            continue
        words += _words(param, name, ctx.params.get(name))
    return shlex.join([*words, "--resume"])


def _words(param: Any, name: str, value: Any) -> list[str]:
    """A click parameter and its value as words of a command line."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if param.param_type_name == "argument":
        return [_path_or_value(name, v) for v in values]
    flag = max(param.opts, key=len)  # the long form reads best in a log
    if param.is_flag:
        if value:
            return [flag]
        return [max(param.secondary_opts, key=len)] if param.secondary_opts else []
    return [word for v in values for word in (flag, _path_or_value(name, v))]


def _path_or_value(name: str, value: Any) -> str:
    """Paths (the Path-typed parameters, and file values of the string ones) made absolute."""
    if isinstance(value, os.PathLike):
        return os.path.abspath(os.path.expanduser(value))
    text = str(value)
    if name in ALWAYS_PATHS and text:
        return os.path.abspath(os.path.expanduser(text))
    if name in KEYWORDS and text not in KEYWORDS[name] and os.path.exists(os.path.expanduser(text)):
        return os.path.abspath(os.path.expanduser(text))
    return text
