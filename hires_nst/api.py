"""``stylize``: the renderer from Python (a notebook, a script), images in, an image out.

The engine renders files to files (that is what makes a night's work resumable); this module
wraps it for a caller holding images: PIL images and arrays are written to a temporary folder,
the render runs there, and the result comes back as a PIL image (or a float array). Nothing is
left on disk unless ``work_dir`` asks for it. Settings are the presets' keys, as keywords
(``max_size=1024``, ``style_weight=5``, ``optimizer="adam"``): ``help(stylize)`` lists them, and errors
name them so (``max_size must be ...``, where the command line says ``--max-size``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import re
import tempfile
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from hires_nst.config.options import PANELS, Setting
from hires_nst.config.presets import resolve_with_preset
from hires_nst.config.settings import all_settings, named_layer
from hires_nst.errors import ConfigError, HiresNSTError, InputError, Interrupted
from hires_nst.events import Event, null_sink, tee

ImageLike = str | os.PathLike | Image.Image | np.ndarray
OUTPUT_NAME = "stylized.png"
SOURCE = "stylize()"  # how errors name the keywords' layer of settings
TAKEN = ("work_dir",)  # settings that are stylize()'s own parameters


def stylize(content: ImageLike, styles: ImageLike | Sequence[ImageLike], *, preset: str | None = None,
            progress: bool = False, callback: Callable[[Event], None] | None = None,
            work_dir: str | os.PathLike | None = None, resume: bool = False, as_array: bool = False,
            **settings: Any) -> Image.Image | np.ndarray:
    """Render ``content`` in the style of ``styles`` and return the result.

    ``content``, ``styles``: file paths, PIL images or arrays ((H, W, 3) uint8, or float in [0, 1]:
    other floats, NaN and empty arrays are refused with an InputError).
    ``preset``: a built-in preset name or a .toml file; ``settings`` override it (``max_size=1024``).
    ``progress``: show progress bars (in a notebook too); ``callback``: receives every engine event
    (``hires_nst.events``: Planned, StageStarted, Step, Preview with the image in progress, ...).
    ``work_dir``: keep the checkpoints, trace and the output (``stylized.png``) there, so that a
    later call with ``resume=True`` goes on from them; without it nothing stays on disk.
    Returns an RGB ``PIL.Image`` (8-bit), or with ``as_array`` the (H, W, 3) float32 result in [0, 1].
    Raises ``hires_nst.ConfigError`` for a setting (its ``setting`` names it), ``InputError`` for an
    image, ``WeightsError``, ``DeviceError``...: all ``hires_nst.HiresNSTError``.
    The network stays loaded for the next call in this process (``hires_nst.model.cache``).
    """
    try:
        return _stylize(content, styles, preset, progress, callback, work_dir, resume, as_array, settings)
    except Interrupted as exc:  # the command line's advice (a command with --resume) means nothing here
        exc.advice = RESUME_ADVICE if work_dir is not None else NO_RESUME_ADVICE
        exc.args = (f"{exc.said if work_dir is not None else 'interrupted'}; {exc.advice}",)
        raise
    except HiresNSTError as exc:
        exc.args = (in_caller_terms(exc),)  # same error, traceback and fields: only the words change
        raise


RESUME_ADVICE = "to continue, call stylize() again with the same arguments and resume=True"
NO_RESUME_ADVICE = "nothing was kept (no work_dir=): give stylize() a work_dir to be able to go on after a stop"


def _stylize(content: ImageLike, styles: ImageLike | Sequence[ImageLike], preset: str | None, progress: bool,
             callback: Callable[[Event], None] | None, work_dir: str | os.PathLike | None, resume: bool,
             as_array: bool, settings: dict[str, Any]) -> Image.Image | np.ndarray:
    from hires_nst.config.renderjob import RenderJob
    from hires_nst.engine.render import render
    from hires_nst.io import images

    if callback is not None and not callable(callback):  # before any work: not at the first event
        raise ConfigError(f"stylize(): callback must be callable (a function taking each event), got {callback!r}")
    style_list = list(styles) if isinstance(styles, (list, tuple)) else [cast(ImageLike, styles)]  # one image
    # Settings checked before any file is written; work_dir is a parameter of its own.
    keywords = {name: list(value) if isinstance(value, tuple) else value for name, value in settings.items()}
    config = resolve_with_preset(preset, (SOURCE, named_layer(keywords, SOURCE, taken=TAKEN)))
    with _folder(work_dir) as folder:
        inputs = folder / "inputs"
        content_path = _as_file(content, inputs, "content")
        style_paths = tuple(_as_file(s, inputs, f"style {i + 1}") for i, s in enumerate(style_list))
        kept = dataclasses.replace(config.output, work_dir=str(folder / "work"), bit_depth=16)
        job = RenderJob(content_path, style_paths, folder / OUTPUT_NAME, dataclasses.replace(config, output=kept),
                        resume=resume)
        with _progress(progress) as shown:
            result = render(job, tee(shown, callback or null_sink))
        array = images.load_image(result.output, "the result")
    if as_array:
        return array
    return Image.fromarray(np.round(array * 255).astype(np.uint8))


@contextlib.contextmanager
def _folder(work_dir: str | os.PathLike | None) -> Iterator[Path]:
    """``work_dir`` (kept), or a temporary folder removed afterwards."""
    if work_dir is not None:
        path = Path(work_dir).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="hires-nst-") as temporary:
        yield Path(temporary)


def _as_file(image: ImageLike, folder: Path, what: str) -> Path:
    """A path for the engine: paths as given; images written losslessly (float arrays at 16 bits).
    ``what`` ("content", "style 1") names the image in errors."""
    if isinstance(image, (str, os.PathLike)):
        return Path(image).expanduser()
    folder.mkdir(parents=True, exist_ok=True)
    name = what.replace(" ", "-")
    if isinstance(image, Image.Image):
        if 0 in image.size:
            raise InputError(f"stylize(): the {what} image is empty ({image.width}x{image.height} pixels)")
        if image.mode == "F":
            _check_finite(np.asarray(image), what)
        if image.mode in ("1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16"):
            path = folder / f"{name}.png"
            image.save(path, icc_profile=image.info.get("icc_profile"), exif=image.getexif())
        else:  # CMYK, YCbCr, LAB, F: TIFF holds them, with their profile
            path = folder / f"{name}.tif"
            image.save(path, icc_profile=image.info.get("icc_profile"))
        return path
    if isinstance(image, np.ndarray):
        return _array_file(image, folder / f"{name}.png", what)
    raise InputError(f"stylize(): {what} must be a path, a PIL image or an array, got {type(image).__name__}")


# A float array may miss [0, 1] by half an 8-bit step (a caller's own rounding): that is clipped.
UNIT_RANGE_SLACK = 1 / 512


def _array_file(array: np.ndarray, path: Path, what: str) -> Path:
    from hires_nst.io import images

    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise InputError(f"stylize(): an image array must be (H, W), (H, W, 3) or (H, W, 4), got {array.shape} "
                         f"for the {what}")
    if 0 in array.shape[:2]:
        raise InputError(f"stylize(): the {what} array is empty ({array.shape[1]}x{array.shape[0]} pixels)")
    if array.dtype == np.uint8:
        Image.fromarray(array).save(path)
        return path
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"stylize(): an image array must be uint8 or float in [0, 1], got {array.dtype} "
                         f"for the {what}")
    _check_unit_range(array, what)
    rgb = array[..., :3] if array.shape[2] == 3 else array[..., :3] * array[..., 3:] + (1 - array[..., 3:])
    return images.save_image(path, np.clip(rgb, 0, 1).astype(np.float32), bit_depth=16)


def _check_finite(array: np.ndarray, what: str) -> None:
    if not np.isfinite(array).all():
        raise InputError(f"stylize(): the {what} holds values that are not finite (NaN or infinity)")


def _check_unit_range(array: np.ndarray, what: str) -> None:
    """Floats are read as [0, 1]: anything else would be clipped to black or white, so it is refused."""
    _check_finite(array, f"{what} array")
    low, high = float(array.min()), float(array.max())
    if low < -UNIT_RANGE_SLACK or high > 1 + UNIT_RANGE_SLACK:
        hint = "; values in 0..255 are an 8-bit image: divide it by 255, or pass it as uint8" if high > 1 else ""
        raise InputError(f"stylize(): float image arrays must hold values in [0, 1]; the {what} array holds "
                         f"{low:g} to {high:g}{hint}")


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[Callable[[Event], None]]:
    if not show:
        yield null_sink
        return
    from rich.console import Console

    from hires_nst.cli.progress import ProgressDisplay

    with ProgressDisplay(Console(stderr=True)) as display:
        yield display


# --------------------------------------------------------------------------- a Python caller's words

_FLAG = re.compile(r"(?<![\w-])--[a-z0-9][a-z0-9-]*")


def _keywords() -> dict[str, str]:
    """Each setting's flag -> its keyword (read each time: a field added in a test counts)."""
    return {s.option.flag: s.name for s in all_settings()}


def in_keyword_terms(text: str) -> str:
    """Command-line words in Python's: each setting's flag becomes its keyword (``--max-size`` ->
    ``max_size``, ``--no-keep-checkpoints`` -> ``keep_checkpoints=False``); other flags stay."""
    keywords = _keywords()

    def keyword(match: re.Match[str]) -> str:
        flag = match[0]
        if flag in keywords:
            return keywords[flag]
        if flag.startswith("--no-") and f"--{flag[5:]}" in keywords:
            return f"{keywords[f'--{flag[5:]}']}=False"
        return flag
    return _FLAG.sub(keyword, text)


def in_caller_terms(exc: HiresNSTError) -> str:
    """An error's message as ``stylize()``'s caller passed the settings: ``max_size must be at least 16
    pixels, got 8`` where the command line says ``--max-size (pyramid.max_size) must be ...``. One
    validation words it for both: a ConfigError about one setting carries its name and problem."""
    if isinstance(exc, ConfigError) and exc.setting:
        where = f"{exc.source}: " if exc.source else ""
        return f"{where}{exc.setting} {in_keyword_terms(exc.problem)}"
    return in_keyword_terms(str(exc))


# --------------------------------------------------------------------------- help(stylize)


def _in_panel_order(settings: list[Setting]) -> list[Setting]:
    return sorted(settings, key=lambda s: PANELS.index(s.option.panel))  # stable: as declared within a panel


def _settings_help(settings: list[Setting]) -> str:
    """The settings, by ``--help``'s panels, each ``name=default: help`` (in keyword terms)."""
    lines, panel = [], ""
    for setting in _in_panel_order(settings):
        if setting.option.panel != panel:
            panel = setting.option.panel
            lines.append(f"\n    {panel}:")
        default = in_keyword_terms(setting.option.shown or "") or repr(setting.default)
        text = f"{setting.name}={default}: {in_keyword_terms(setting.option.help)}"
        lines.extend(textwrap.wrap(text, 104, initial_indent=" " * 8, subsequent_indent=" " * 12))
    return "\n".join(lines)


def _document(func: Callable[..., Any]) -> None:
    """Give ``func`` (stylize) a keyword per setting in its signature, which help(), IDEs and a
    notebook's completion read, and the settings' help in its docstring."""
    settings = [s for s in all_settings() if s.name not in TAKEN]
    own = [p for p in inspect.signature(func).parameters.values() if p.kind is not p.VAR_KEYWORD]
    keywords = [inspect.Parameter(s.name, inspect.Parameter.KEYWORD_ONLY, default=s.default, annotation=s.kind)
                for s in _in_panel_order(settings)]
    signature = inspect.Signature([*own, *keywords], return_annotation=inspect.signature(func).return_annotation)
    func.__signature__ = signature  # type: ignore[attr-defined]
    heading = "Settings, as keywords (where not given: the preset's value, else the default shown):"
    func.__doc__ = f"{(func.__doc__ or '').rstrip()}\n\n    {heading}\n{_settings_help(settings)}\n"


_document(stylize)
