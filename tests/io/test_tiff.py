"""TIFF outputs through tifffile: 8 and 16 bits with DPI, the sRGB profile and the settings, and
BigTIFF when the pixels pass the classic format's 4 GB."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile

from hires_nst.io import encode16, images
from tests.helpers.paths import EXAMPLES


def _gradient(height: int = 40, width: int = 56) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x / (width - 1), y / (height - 1), (x + y) / (width + height - 2)], axis=2).astype(np.float32)


@pytest.mark.parametrize("bits", [8, 16])
def test_tiff_round_trips_pixels_icc_dpi_and_description(tmp_path: Path, bits: int) -> None:
    array = _gradient()
    settings = json.dumps({"config": {"pyramid": {"max_size": 56}}, "note": "caf\u00e9"})
    path = images.save_image(tmp_path / "out.tif", array, {images.SETTINGS_KEY: settings}, dpi=240, bit_depth=bits)

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        stored = page.asarray()
        assert not tif.is_bigtiff
        assert stored.dtype == (np.uint16 if bits == 16 else np.uint8) and stored.shape == (40, 56, 3)
        assert page.tags["XResolution"].value == (240, 1) and page.tags["ResolutionUnit"].value == 2  # inch
        assert page.tags["InterColorProfile"].value == images.srgb_profile()
        assert json.loads(page.description) == json.loads(settings)
        assert page.compression == 8 and page.predictor == 2  # deflate, horizontal differencing
    scale = 65535 if bits == 16 else 255
    assert np.array_equal(stored, np.round(array * scale).astype(stored.dtype))
    again = images.load_image(path)  # and our own loader (OpenCV for 16 bits) reads it back
    assert np.abs(again - array).max() <= 0.5 / scale + 1e-6


def test_pixels_past_the_classic_limit_are_written_as_bigtiff(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    assert encode16.needs_bigtiff(5 * 2**30) and not encode16.needs_bigtiff(3 * 2**30)
    monkeypatch.setattr(encode16, "CLASSIC_TIFF_LIMIT", 1000)  # as if these 13 kB were 5 GB
    array = _gradient()
    path = images.save_image(tmp_path / "big.tif", array, dpi=300, bit_depth=16)

    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff
        assert tif.pages[0].tags["XResolution"].value == (300, 1)
    assert np.abs(images.load_image(path) - array).max() <= 0.5 / 65535 + 1e-6


def test_an_output_named_without_extension_is_recorded_under_the_name_written(tmp_path: Path) -> None:
    """``-o small --format tif`` writes small.tif: the settings must say so (they said ``small``)."""
    from hires_nst.config.settings import resolve
    from hires_nst.engine.render import RenderJob, render
    from hires_nst.io.trace import compare_runs

    config = resolve(("test", {"pyramid": {"max_size": 32, "iterations": [2]}, "output": {
        "format": "tif", "work_dir": str(tmp_path / "work")}, "model": {"weights": "random"}}))
    result = render(RenderJob(EXAMPLES / "tubingen.jpg", (EXAMPLES / "starry_night.jpg",), tmp_path / "small", config))

    assert result.output == tmp_path / "small.tif" and result.output.is_file()
    record = json.loads(result.settings.read_text())
    assert record["output"] == str(tmp_path / "small.tif")
    assert record["trace"] == str(tmp_path / "small.tif.trace.csv") and Path(record["trace"]).is_file()
    assert [run.run for run in compare_runs([tmp_path])] == [str(tmp_path / "small.tif")]
