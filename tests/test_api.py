"""``stylize()``: images in, an image out, from Python; nothing on disk unless asked."""

from __future__ import annotations

import gc
import inspect
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import hires_nst
import hires_nst.engine.render
from hires_nst import stylize
from hires_nst.api import in_caller_terms
from hires_nst.cli.main import app
from hires_nst.config.settings import all_settings, resolve
from hires_nst.errors import ConfigError, InputError, Interrupted
from hires_nst.events import Planned, Preview, StageFinished, Step
from hires_nst.model.cache import extractors
from tests.helpers.paths import EXAMPLES


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def test_stylize_renders_a_pil_image_and_leaves_no_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp, cwd = tmp_path / "temp", tmp_path / "cwd"
    temp.mkdir(), cwd.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr("tempfile.tempdir", None)  # re-read TMPDIR
    monkeypatch.chdir(cwd)
    content = Image.open(EXAMPLES / "tubingen.jpg").convert("RGB").resize((64, 48))
    style = np.asarray(Image.open(EXAMPLES / "starry_night.jpg").convert("RGB").resize((64, 50)))  # an array
    events = []

    result = stylize(content, style, max_size=64, iterations=4, callback=events.append)

    assert isinstance(result, Image.Image) and result.mode == "RGB" and result.size == (64, 48)
    assert np.asarray(result).std() > 0.01 * 255  # a picture, not a flat image
    kinds = {type(e) for e in events}
    assert {Planned, Step, StageFinished, Preview} <= kinds
    left = {p for p in _files(temp) if not p.relative_to(temp).parts[0].startswith("torchinductor_")}  # torch's cache
    assert _files(cwd) == set() and left == set()  # the temporary folder went with the call


def test_stylize_keeps_its_work_where_asked_and_returns_an_array(tmp_path: Path) -> None:
    result = stylize(EXAMPLES / "tubingen.jpg", [str(EXAMPLES / "starry_night.jpg")], preset="preview",
                     max_size=32, min_size=32, iterations=(3,), work_dir=tmp_path / "w", as_array=True)

    assert result.dtype == np.float32 and result.shape[2] == 3 and max(result.shape[:2]) == 32
    assert (tmp_path / "w" / "stylized.png").is_file() and (tmp_path / "w" / "work" / "trace.csv").is_file()


def test_an_unknown_setting_is_a_config_error_naming_it_and_the_setting_meant() -> None:
    with pytest.raises(ConfigError, match="unknown setting 'max_sise'; did you mean max_size") as error:
        stylize(EXAMPLES / "tubingen.jpg", EXAMPLES / "starry_night.jpg", max_sise=64)
    assert "known:" not in str(error.value)  # not the 50 names as well


def test_import_hires_nst_stays_cheap() -> None:
    code = "import sys, hires_nst; print('torch' in sys.modules, callable(hires_nst.stylize))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


# --- arrays and arguments checked before any work --------------------------------------------------


@pytest.fixture
def no_render(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hires_nst.engine.render, "render", lambda job, sink: pytest.fail("the render started"))


def _photo() -> np.ndarray:
    return np.asarray(Image.open(EXAMPLES / "tubingen.jpg").convert("RGB").resize((32, 24)))


BAD_ARRAYS = {
    "floats in 0..255": (_photo().astype(np.float32), r"float.*\[0, 1\].*0\.\.255"),
    "NaN": (np.where(np.arange(32)[None, :, None] == 3, np.nan, _photo() / 255.0), "not finite"),
    "infinity": (np.full((24, 32, 3), np.inf), "not finite"),
    "empty": (np.zeros((0, 0, 3), np.uint8), "empty"),
    "empty float": (np.zeros((0, 5, 3), np.float32), "empty"),
    "negative floats": (np.full((24, 32, 3), -0.5), r"\[0, 1\]"),
}


@pytest.mark.parametrize("which", ["content", "style"])
@pytest.mark.parametrize("case", BAD_ARRAYS)
def test_a_bad_array_is_an_input_error_before_the_render(case: str, which: str, no_render: None) -> None:
    array, expected = BAD_ARRAYS[case]
    images = {"content": _photo(), "style": _photo()} | {which: array}
    with pytest.raises(InputError, match=expected) as error:
        stylize(images["content"], images["style"], max_size=32)
    assert which in str(error.value)


def test_floats_a_hair_outside_the_unit_range_are_clipped_not_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(hires_nst.engine.render, "render", lambda job, sink: seen.append(job) or pytest.skip("seen"))
    array = _photo() / 255.0
    array[0, 0] = (1.0 + 1e-6, -1e-6, 0.5)  # rounding of a caller's own arithmetic
    with pytest.raises(pytest.skip.Exception):
        stylize(array, _photo(), max_size=32)
    assert seen


@pytest.mark.parametrize("argument", [{"callback": 5}, {"callback": "print"}])
def test_a_callback_that_cannot_be_called_is_refused_before_the_render(argument: dict, no_render: None) -> None:
    with pytest.raises(ConfigError, match="callback must be callable"):
        stylize(_photo(), _photo(), max_size=32, **argument)


def test_a_failing_callback_leaves_no_file_open(tmp_path: Path) -> None:
    def fails(event: object) -> None:
        raise RuntimeError("the caller's callback failed")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="callback failed"):
            stylize(_photo(), _photo(), max_size=32, iterations=2, callback=fails, work_dir=tmp_path / "w")
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


# --- the package's surface: names, help ------------------------------------------------------------


def test_the_public_names_are_listed_before_first_use_and_import_no_torch() -> None:
    code = ("import sys, hires_nst; print(*sorted(n for n in dir(hires_nst) if not n.startswith('_')));"
            "[getattr(hires_nst, n) for n in hires_nst.__all__]; print('torch' in sys.modules)")
    listed, torch_loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                          check=True).stdout.splitlines()

    assert set(hires_nst.__all__) - {"__version__"} <= set(listed.split()) and "Any" not in listed.split()
    assert {"stylize", "HiresNSTError", "ConfigError", "InputError", "WeightsError"} <= set(hires_nst.__all__)
    assert torch_loaded == "False"
    assert hires_nst.ConfigError is ConfigError and issubclass(hires_nst.ConfigError, hires_nst.HiresNSTError)


def test_help_of_stylize_shows_every_setting_as_a_keyword_with_its_default_and_help() -> None:
    parameters = inspect.signature(stylize).parameters
    settings = [s for s in all_settings() if s.name != "work_dir"]  # work_dir is a parameter of its own

    for setting in settings:
        assert parameters[setting.name].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters[setting.name].default == setting.default
    doc = stylize.__doc__ or ""
    assert "max_size=512: Long side of the output in pixels (print_size, when given, overrides it)." in doc
    assert not [s.option.flag for s in settings if s.option.flag in doc]  # keywords, never flags


# --- errors in the caller's words ------------------------------------------------------------------


def test_one_validation_words_a_bad_value_with_the_keyword_here_and_the_flag_on_the_command_line(
        tmp_path: Path, no_render: None) -> None:
    with pytest.raises(ConfigError) as error:
        stylize(_photo(), _photo(), max_size=8)
    cli = CliRunner().invoke(app, ["render", str(EXAMPLES / "tubingen.jpg"), str(EXAMPLES / "starry_night.jpg"),
                                   "-o", str(tmp_path / "o.png"), "--max-size", "8"])

    assert str(error.value) == "max_size must be at least 16 pixels, got 8" and error.value.setting == "max_size"
    assert cli.exit_code == 2 and cli.stderr.strip() == "error: --max-size (pyramid.max_size) must be at least 16 " \
                                                        "pixels, got 8"


MISTAKES = {  # keywords -> the start of what stylize() says
    "a word for a number": ({"max_size": "big"}, "stylize(): max_size must be an integer, got 'big'"),
    "a number for a switch": ({"keep_checkpoints": 3}, "stylize(): keep_checkpoints must be true or false, got 3"),
    "an unknown optimiser": ({"optimizer": "adma"}, "optimizer must be one of lbfgs, adam"),
    "sizes crossed": ({"min_size": 600, "max_size": 512}, "min_size 600 is larger than max_size 512"),
    "layer weights miscounted": ({"style_layer_weights": "1:2"}, "style_layer_weights has 2 weights for 5"),
    "an unknown paper": ({"print_size": "A9"}, "print_size 'A9': use a paper name"),
    "an unknown device": ({"device": "gpu"}, "device: unknown device 'gpu'"),
    "a tile too small": ({"tile_size": "8"}, "tile_size must be auto, off or a whole number of pixels >= 16"),
}


@pytest.mark.parametrize("case", MISTAKES)
def test_a_mistake_is_worded_with_keywords_not_flags(case: str, no_render: None) -> None:
    keywords, expected = MISTAKES[case]
    with pytest.raises(ConfigError) as error:
        stylize(_photo(), _photo(), **keywords)
    assert str(error.value).startswith(expected) and "--" not in str(error.value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -1, 10**30], ids=["nan", "inf", "negative", "huge"])
def test_every_refused_number_names_its_keyword_in_python(value: float) -> None:
    """Over every numeric setting (found by type, as the command line's test does for flags)."""
    refused = []
    for setting in all_settings():
        kind = getattr(setting.kind, "__args__", (setting.kind,))[0]
        if kind not in (int, float):
            continue
        given = [value] if kind is not setting.kind else value
        try:
            resolve(("stylize()", {setting.section: {setting.name: given}}))
        except ConfigError as exc:
            refused.append(in_caller_terms(exc))
            assert setting.name in refused[-1] and "--" not in refused[-1], refused[-1]
    assert len(refused) >= 10  # nan and inf are refused by every float setting, 10**30 by every int


# --- the network kept warm between calls -----------------------------------------------------------


def test_a_second_call_reuses_the_network_and_renders_the_same_image(monkeypatch: pytest.MonkeyPatch) -> None:
    extractors.clear()
    loads = []
    load = hires_nst.engine.render.load_weights
    monkeypatch.setattr(hires_nst.engine.render, "load_weights", lambda *args: loads.append(args) or load(*args))
    photo, painting = _photo(), np.asarray(Image.open(EXAMPLES / "starry_night.jpg").convert("RGB").resize((32, 26)))

    def call(**settings: object) -> np.ndarray:
        return stylize(photo, painting, max_size=32, iterations=3, as_array=True, **settings)  # type: ignore[return-value]

    first, second = call(), call()
    assert len(loads) == 1 and np.array_equal(first, second)

    extractors.clear()
    assert np.array_equal(call(), first) and len(loads) == 2  # a network built afresh renders the same
    call(pooling="avg")  # another network: built, the other one kept
    assert len(loads) == 3 and len(extractors.keys()) == 2


# --- a stop, in Python's terms ------------------------------------------------------------------------


def _stop_at_the_third_step(event: object) -> None:
    if isinstance(event, Step) and event.iteration == 3:
        raise KeyboardInterrupt


def test_a_stopped_call_with_a_work_dir_says_to_call_again_with_resume_and_that_call_goes_on(tmp_path: Path) -> None:
    work = tmp_path / "work"
    with pytest.raises(Interrupted) as stop:
        stylize(_photo(), _photo(), max_size=32, iterations=6, work_dir=work, callback=_stop_at_the_third_step)
    assert str(stop.value).endswith("; to continue, call stylize() again with the same arguments and resume=True")
    assert "--resume" not in str(stop.value) and "hires-nst render" not in str(stop.value)

    steps: list[int] = []
    stylize(_photo(), _photo(), max_size=32, iterations=6, work_dir=work, resume=True,
            callback=lambda e: steps.append(e.iteration) if isinstance(e, Step) else None)
    assert steps and steps[0] == 4  # it goes on after the iteration it stopped at


def test_a_stopped_call_without_a_work_dir_says_nothing_was_kept() -> None:
    with pytest.raises(Interrupted) as stop:
        stylize(_photo(), _photo(), max_size=32, iterations=6, callback=_stop_at_the_third_step)
    assert str(stop.value) == ("interrupted; nothing was kept (no work_dir=): give stylize() a work_dir to be able "
                               "to go on after a stop")
