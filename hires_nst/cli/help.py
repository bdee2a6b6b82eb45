"""How ``render --help`` is laid out: each option's help with the default it shows, and no type labels.
Kept apart from ``cli.main`` so that the commands stay short.

``render`` has over fifty options; one flat list hides the five a newcomer needs. Each option names
its panel (``config.options.PANELS``: what to render, how it looks, how the pyramid climbs, what file
comes out, how fast, what is kept on the way, the knobs for experiments); config settings declare
theirs on their field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from hires_nst.config.options import MESSAGES, Setting

ARGUMENTS = ("content", "styles")  # typer shows arguments in a panel of their own, first


def default_text(setting: Setting) -> str | None:
    """The default ``--help`` shows for a config setting (None: none to show)."""
    if setting.option.shown is not None:  # one that depends on something else, said in words
        return setting.option.shown
    value = setting.default
    if value in ("", ()):
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, int) and value >= 100_000:
        return f"{value:_}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def help_with_default(text: str, shown: str | None) -> str:
    """An option's help followed by its default, as typer shows one (rich markup: brackets escaped)."""
    text = escape(text)
    return f"{text} [dim]\\[default: {escape(shown)}][/dim]" if shown is not None else text


if TYPE_CHECKING:  # the mixin is only ever put before a typer command or group
    _Command = TyperCommand
else:
    _Command = object


class _PlainTypes(_Command):
    """Help without typer's internal type labels (``<path>``, ``<list[Path]>``, ``<bool>``): options
    show their metavar (set on each), arguments and ``--help`` nothing, since their name says it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if param.param_type_name == "argument" or not getattr(param, "metavar", None):
                _hide_type(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None:
            _hide_type(option)
            if MESSAGES in {getattr(p, "rich_help_panel", None) for p in self.params}:
                option.rich_help_panel = MESSAGES
        return option


def _hide_type(param: Any) -> None:
    param.display_type_rich = lambda ctx: None  # read by typer's rich help


class PlainCommand(_PlainTypes, TyperCommand):
    """A command whose ``--help`` shows no type labels."""


class PlainGroup(_PlainTypes, TyperGroup):
    """The app (and sub-apps) likewise."""
