"""How ``render --help`` is laid out: which panel each option sits in, what its value looks like
and what default it shows. Kept apart from ``cli.py`` so that the commands stay short.

``render`` has over fifty options; one flat list hides the five a newcomer needs. The panels follow
the order in which people reach for them: what to render, how it looks, how the pyramid climbs,
what file comes out, how fast, what is kept on the way, and the knobs for experiments.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from hires_nst.config.settings import SECTIONS

ESSENTIALS = "Essentials"
PANELS: dict[str, tuple[str, ...]] = {
    ESSENTIALS: ("output", "preset", "max_size", "iterations", "print_size"),
    "Style and loss": ("style_weight", "content_weight", "tv_weight", "style_loss", "style_blend", "preserve_color",
                       "mask", "region", "style_scale", "style_upscale", "init", "seed"),
    "Pyramid": ("min_size", "scale_factor", "fit_iterations", "tolerance", "patience"),
    "Print and output": ("format", "bit_depth", "dpi", "fit", "orientation", "save_stages", "animate",
                         "animate_every", "animate_size", "max_input_pixels"),
    "Devices and speed": ("device", "devices", "precision", "sync_every", "tile_size", "halo"),
    "Checkpoints": ("work_dir", "resume", "restart", "save_every", "save_minutes", "keep_checkpoints"),
    "Experiments": ("optimizer", "lr", "warm_start", "average_iterates", "backbone", "weights", "pooling",
                    "preprocessing", "content_layers", "style_layers", "style_layer_weights"),
    "Watching and messages": ("web", "port", "host", "log_every", "quiet", "debug", "help"),
}
ARGUMENTS = ("content", "styles")  # typer shows arguments in a panel of their own, first
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}

# What a value looks like, instead of the parameter's Python type.
METAVARS = {
    "max_size": "PX", "min_size": "PX", "animate_size": "PX", "halo": "PX", "tile_size": "auto|off|PX",
    "iterations": "N[,N...]", "style_blend": "W,W...", "content_layers": "LAYER[,...]",
    "style_layers": "LAYER[,...]", "style_layer_weights": "halving|descending|equal|W:W...[/...]", "scale_factor": "X",
    "style_scale": "X", "content_weight": "W", "style_weight": "W", "tv_weight": "W", "lr": "X",
    "seed": "N", "sync_every": "N", "save_every": "N", "save_minutes": "MIN", "animate_every": "N",
    "bit_depth": "8|16", "dpi": "DPI", "max_input_pixels": "N", "print_size": "PAPER", "work_dir": "DIR",
    "animate": "FILE", "init": "content|noise|FILE", "weights": "NAME|FILE", "format": "png|tif|jpg",
    "fit": "fit|crop", "orientation": "auto|portrait|landscape", "preserve_color": "off|luminance|match",
    "optimizer": "NAME", "backbone": "vgg19|vgg16|resnet50", "pooling": "max|avg",
    "preprocessing": "auto|caffe|torchvision", "device": "DEVICE", "devices": "all|DEVICE,...",
    "precision": "auto|fp32|bf16|fp16", "style_loss": "gram|w2[/...]", "average_iterates": "DECAY", "mask": "FILE",
    "region": "COLOUR=STYLE[:W]", "tolerance": "FRACTION", "patience": "N",
}

_DEFAULTS = {f.name: f.default for cls in SECTIONS.values() for f in dataclasses.fields(cls)}
# Defaults that depend on something else: said in words.
_SAID = {"min_size": "128", "iterations": "300,150,80,50...", "lr": "per optimizer", "sync_every": "1 CPU, 10 CUDA",
         "halo": "exact minimum", "content_layers": "backbone's",
         "style_layers": "backbone's"}


def metavar(name: str) -> str:
    """The value's shape for ``--help``; empty for on/off flags."""
    return METAVARS.get(name, "")


def default_text(name: str) -> str | bool:
    """The default ``--help`` shows for a config setting (False: none to show)."""
    if name in _SAID:
        return _SAID[name]
    value: Any = _DEFAULTS.get(name, dataclasses.MISSING)
    if value is dataclasses.MISSING or value in ("", ()):
        return False
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    if isinstance(value, int) and value >= 100_000:
        return f"{value:_}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def help_with_default(name: str, text: str) -> str:
    """The option's help followed by its default, as typer shows one (rich markup: brackets escaped)."""
    shown = default_text(name)
    text = escape(text)
    return f"{text} [dim]\\[default: {escape(str(shown))}][/dim]" if shown is not False else text


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
            if PANEL_OF["help"] in {getattr(p, "rich_help_panel", None) for p in self.params}:
                option.rich_help_panel = PANEL_OF["help"]
        return option


def _hide_type(param: Any) -> None:
    param.display_type_rich = lambda ctx: None  # read by typer's rich help


class PlainCommand(_PlainTypes, TyperCommand):
    """A command whose ``--help`` shows no type labels."""


class PlainGroup(_PlainTypes, TyperGroup):
    """The app (and sub-apps) likewise."""
