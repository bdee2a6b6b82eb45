"""hires-nst: print-size neural style transfer (Gatys et al.) over a resolution pyramid.

``from hires_nst import stylize`` is the Python entry point (api.py); it is loaded on first use,
so that ``import hires_nst`` (and the command line's ``--help``) stays free of torch.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["stylize", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "stylize":
        from hires_nst.api import stylize

        return stylize
    raise AttributeError(f"module 'hires_nst' has no attribute {name!r}")
