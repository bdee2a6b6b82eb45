"""Each option declared once: a config field carries its flag, help, ``--help`` panel and value shape.

The render command's options, its ``--help`` panels, the preset keys and ``stylize()``'s keywords are
all read from the fields (``settings_of``), so that adding an option is one field plus its use.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

# The panels of ``render --help``, in the order people reach for them: what to render, how it looks,
# how the pyramid climbs, what file comes out, how fast, what is kept on the way, the knobs for
# experiments. A panel lists its options in the order they are declared.
ESSENTIALS = "Essentials"
STYLE = "Style and loss"
PYRAMID = "Pyramid"
OUTPUT = "Print and output"
DEVICES = "Devices and speed"
CHECKPOINTS = "Checkpoints"
EXPERIMENTS = "Experiments"
MESSAGES = "Watching and messages"
PANELS = (ESSENTIALS, STYLE, PYRAMID, OUTPUT, DEVICES, CHECKPOINTS, EXPERIMENTS, MESSAGES)

_KEY = "option"  # the field metadata key


@dataclass(frozen=True)
class Option:
    """How a setting shows on the command line.

    ``metavar``: what a value looks like (empty for on/off flags); ``shown``: the default ``--help``
    shows in words, where it depends on something else; ``whole``: a list of strings whose items are
    never split at commas or colons (a single string is one item; the flag may be repeated).
    """

    flag: str
    help: str
    panel: str
    metavar: str = ""
    shown: str | None = None
    whole: bool = False


def option(flag: str, help: str, default: Any, *, panel: str, metavar: str = "", shown: str | None = None,
           whole: bool = False) -> Any:
    """A config field that is also a command-line option (its one declaration)."""
    if panel not in PANELS:
        raise ValueError(f"{flag}: unknown panel {panel!r}; panels: {', '.join(PANELS)}")
    return dataclasses.field(default=default, metadata={_KEY: Option(flag, help, panel, metavar, shown, whole)})


def option_of(f: dataclasses.Field[Any]) -> Option:
    """The option a config field declares."""
    declared: Option = f.metadata[_KEY]
    return declared


@dataclass(frozen=True)
class Setting:
    """One config field seen whole: where it lives, its Python type and default, its option."""

    section: str
    name: str
    kind: Any
    default: Any
    option: Option


def settings_of(sections: Mapping[str, type]) -> Iterator[Setting]:
    """Every field of every section, in declaration order (sections in the given order)."""
    for section, cls in sections.items():
        hints = get_type_hints(cls)
        for f in dataclasses.fields(cls):
            yield Setting(section, f.name, hints[f.name], f.default, option_of(f))


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``did you mean max_size?`` for a name close to known ones, else empty: one wording for every
    misspelt name (a setting, a preset key, a preset), found by difflib as click finds a misspelt flag."""
    # The closest only: the next ones are mostly noise (min_size and animate_size, for max_sise).
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean {close[0]}?" if close else ""
