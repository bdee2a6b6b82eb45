"""The inputs' thumbnails: small, the right way up, made once, nothing for an index out of range."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import hires_nst.web.thumbs
from hires_nst.web.thumbs import THUMB_SIZE, Thumbnails, thumbnail
from tests.helpers.paths import CONTENT
from tests.helpers.synthetic import write_image


def _size(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as image:
        assert image.format == "JPEG"
        return image.size


def test_a_large_input_shrinks_to_the_long_side_and_a_small_one_is_not_enlarged(tmp_path: Path) -> None:
    assert _size(thumbnail(CONTENT)) == (THUMB_SIZE, 192)  # tubingen.jpg is 512x384
    assert _size(thumbnail(write_image(tmp_path / "tall.png", 300, 600))) == (128, THUMB_SIZE)
    assert _size(thumbnail(write_image(tmp_path / "small.png", 48, 40))) == (48, 40)


def test_a_thumbnail_is_the_right_way_up_and_keeps_the_colours(tmp_path: Path) -> None:
    """An EXIF orientation turns the picture as the render turns the photo (``io.images``)."""
    pixels = np.zeros((100, 300, 3), np.uint8)
    pixels[:, :150] = (255, 0, 0)  # left half red, right half blue
    pixels[:, 150:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: shown turned 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "turned.jpg", quality=95, exif=exif)

    with Image.open(io.BytesIO(thumbnail(tmp_path / "turned.jpg"))) as image:
        assert image.size == (85, 256)
        top, bottom = np.asarray(image.convert("RGB"))[[10, -10], 40].astype(int)
    assert top[0] > 200 and top[2] < 60  # the red half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_thumbnails_are_made_once_and_none_outside_the_inputs(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[Path] = []
    real = hires_nst.web.thumbs.thumbnail

    def counting(path: Path, size: int = THUMB_SIZE) -> bytes:
        made.append(path)
        return real(path, size)

    monkeypatch.setattr(hires_nst.web.thumbs, "thumbnail", counting)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    thumbs = Thumbnails([CONTENT, broken])

    first = thumbs.get(0)
    assert first is not None and thumbs.get(0) is first
    assert thumbs.get(1) is None and thumbs.get(1) is None  # unreadable: said once by the render, not retried
    assert thumbs.get(2) is None and thumbs.get(-1) is None
    assert made == [CONTENT, broken]
