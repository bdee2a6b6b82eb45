"""``stylize()``: images in, an image out, from Python; nothing on disk unless asked."""

from __future__ import annotations

import gc
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hires_nst import stylize
from hires_nst.errors import ConfigError, InputError
from hires_nst.events import Planned, Preview, StageFinished, Step
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


def test_an_unknown_setting_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="max_sise"):
        stylize(EXAMPLES / "tubingen.jpg", EXAMPLES / "starry_night.jpg", max_sise=64)


def test_import_hires_nst_stays_cheap() -> None:
    code = "import sys, hires_nst; print('torch' in sys.modules, callable(hires_nst.stylize))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


# --- arrays and arguments checked before any work --------------------------------------------------


@pytest.fixture
def no_render(monkeypatch: pytest.MonkeyPatch) -> None:
    import hires_nst.engine.render

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
    import hires_nst.engine.render

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
