"""The render command's options, made from the config fields: each setting is declared once, as its
field (``config.options``), and becomes a typer option here; the command's own options (what to
render, how to run) stay parameters of its function.

``with_setting_options`` gives the command function a generated signature (``__signature__``, which
typer reads): its own parameters plus one keyword per setting, the options sorted into the panels'
order. Every setting's option defaults to None, so that a preset's value stands unless a flag is given.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, get_args

import typer
from typer.models import OptionInfo

from hires_nst.cli.help import default_text, help_with_default
from hires_nst.config.options import PANELS, Setting
from hires_nst.config.settings import all_settings

T = TypeVar("T")
SCALARS = (bool, int, float, str)


def with_setting_options(func: Callable[..., T]) -> Callable[..., T]:
    """``func`` (taking the settings as ``**settings``) with an option for every config setting."""
    own = inspect.signature(func, eval_str=True).parameters.values()
    settings = all_settings()
    clash = {p.name for p in own} & {s.name for s in settings}
    if clash:
        raise TypeError(f"{func.__name__}: {', '.join(sorted(clash))} declared by the config and again here")
    leading = [p for p in own if _option_info(p) is None and p.kind is not p.VAR_KEYWORD]  # context, arguments
    options = [p.replace(kind=p.KEYWORD_ONLY) for p in own if _option_info(p)] + [_parameter(s) for s in settings]
    options.sort(key=_panel_index)  # stable: within a panel, the command's own options first, then as declared

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> T:
        return func(*args, **kwargs)

    command.__signature__ = inspect.Signature([*leading, *options])  # type: ignore[attr-defined]
    return command


def given_settings(values: dict[str, Any]) -> dict[str, Any]:
    """The settings given on the command line (the others are None)."""
    return {name: value for name, value in values.items() if value is not None}


def _parameter(setting: Setting) -> inspect.Parameter:
    option = setting.option
    flag = f"{option.flag}/--no-{option.flag[2:]}" if setting.kind is bool else option.flag  # both spellings,
    # so that a command line can switch off what a preset switched on
    info = typer.Option(flag, help=help_with_default(option.help, default_text(setting)), show_default=False,
                        metavar=option.metavar, rich_help_panel=option.panel)
    return inspect.Parameter(setting.name, inspect.Parameter.KEYWORD_ONLY, default=None,
                             annotation=Annotated[_value_type(setting) | None, info])


def _value_type(setting: Setting) -> Any:
    """What the command line reads; lists are text (``1,2,3``, ``a/b``) that the config parses,
    or a repeated flag for ``whole`` ones."""
    if setting.kind in SCALARS:
        return setting.kind
    return list[str] if setting.option.whole else str


def _option_info(parameter: inspect.Parameter) -> OptionInfo | None:
    """What makes a parameter an option (None for the context, arguments and ``**settings``)."""
    return next((info for info in get_args(parameter.annotation)[1:] if isinstance(info, OptionInfo)), None)


def _panel_index(parameter: inspect.Parameter) -> int:
    info = _option_info(parameter)
    panel = info.rich_help_panel if info else None
    return PANELS.index(panel) if panel in PANELS else -1  # no panel: typer's plain "Options", first
