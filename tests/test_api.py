"""``stylize()``: images in, an image out, from Python; nothing on disk unless asked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hires_nst import stylize
from hires_nst.errors import ConfigError
from hires_nst.events import Planned, Preview, StageFinished, Step

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


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
