"""hires-nst: print-size neural style transfer (Gatys et al.) over a resolution pyramid.

``hires_nst.stylize(content, style, max_size=1024)`` renders from Python (``help(hires_nst.stylize)``
lists its settings); it is loaded on first use, so that ``import hires_nst`` (and the command
line's ``--help``) stays free of torch. The errors it raises are here to be caught: every one is a
``HiresNSTError``; ``ConfigError`` (a setting, named by its ``setting``), ``InputError`` (an
image), ``WeightsError``, ``DeviceError``, ``OutputError``, ``NumericalError``, ``Interrupted``.
The progress events a ``callback`` receives are in ``hires_nst.events``.
"""

from typing import Any as _Any

from hires_nst.errors import (
    ConfigError,
    DeviceError,
    HiresNSTError,
    InputError,
    Interrupted,
    NumericalError,
    OutputError,
    WeightsError,
)

__version__ = "0.1.0"
__all__ = ["stylize", "__version__", "HiresNSTError", "ConfigError", "InputError", "WeightsError", "DeviceError",
           "OutputError", "NumericalError", "Interrupted"]


def __getattr__(name: str) -> _Any:
    if name == "stylize":
        from hires_nst.api import stylize

        return stylize
    raise AttributeError(f"module 'hires_nst' has no attribute {name!r}")


def __dir__() -> list[str]:
    """What tab completion offers: the public names (``stylize`` too, before its first use) and the
    submodules imported so far (``events`` once imported)."""
    return sorted(set(__all__) | {name for name in globals() if not name.startswith("_")})
