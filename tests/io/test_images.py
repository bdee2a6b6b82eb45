"""Image files in and out: every input becomes (H, W, 3) float32 RGB in [0, 1]; outputs are atomic."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageOps

from hires_nst.errors import InputError, OutputError
from hires_nst.io import images

ORIENTATION = 0x0112


def _rgb8(height: int = 32, width: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _assert_rgb_float(array: np.ndarray, height: int, width: int) -> None:
    assert array.shape == (height, width, 3)
    assert array.dtype == np.float32
    assert array.flags["C_CONTIGUOUS"]
    assert 0.0 <= array.min() and array.max() <= 1.0


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


def _add_png_exif(path: Path, orientation: int) -> None:
    """Insert an eXIf chunk after IHDR (Pillow cannot write 16-bit RGB, so cv2 wrote the file)."""
    data = path.read_bytes()
    body = _exif(orientation).tobytes()[len(b"Exif\0\0"):]
    chunk = struct.pack(">I", len(body)) + b"eXIf" + body + struct.pack(">I", zlib.crc32(b"eXIf" + body))
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, length, type, IHDR data, CRC
    path.write_bytes(data[:ihdr_end] + chunk + data[ihdr_end:])


def _linear_gray_icc() -> bytes:
    """A minimal ICC v2 greyscale profile with a linear (gamma 1.0) tone curve.

    Pillow can only create sRGB/LAB/XYZ profiles, and an sRGB-tagged image would load unchanged
    whether or not the profile is applied; a linear profile makes mid grey visibly lighter in sRGB.
    """

    def s15f16(value: float) -> bytes:
        return struct.pack(">i", round(value * 65536))

    d50 = s15f16(0.9642) + s15f16(1.0) + s15f16(0.8249)
    tags = [(b"wtpt", b"XYZ " + bytes(4) + d50), (b"kTRC", b"curv" + bytes(4) + struct.pack(">I", 0))]
    offset = 128 + 4 + 12 * len(tags)
    table, data = b"", b""
    for signature, body in tags:
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body + bytes(-len(body) % 4)
    header = (struct.pack(">I", offset + len(data)) + bytes(4) + struct.pack(">I", 0x02100000)
              + b"mntrGRAYXYZ " + bytes(12) + b"acsp" + bytes(28) + d50 + bytes(48))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


# --- loading: every mode becomes RGB float32 in [0, 1] -------------------------------------------


def test_rgb_png_loads_exactly_as_float32_rgb(tmp_path: Path) -> None:
    pixels = _rgb8()
    Image.fromarray(pixels).save(tmp_path / "rgb.png")

    loaded = images.load_image(tmp_path / "rgb.png")

    _assert_rgb_float(loaded, 32, 48)
    np.testing.assert_allclose(loaded * 255, pixels, atol=1e-3)


@pytest.mark.parametrize("orientation", [6, 3])
def test_jpeg_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    pixels = np.zeros((32, 48, 3), np.uint8)
    pixels[:, :16] = (255, 0, 0)  # a red band on the left of the stored image
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=_exif(orientation), quality=95)

    loaded = images.load_image(tmp_path / "photo.jpg")

    red = (loaded[..., 0] > 0.5) & (loaded[..., 2] < 0.5)
    if orientation == 6:  # rotate 90 degrees clockwise to display: the left band becomes the top band
        _assert_rgb_float(loaded, 48, 32)
        assert red[:14].all() and not red[18:].any()
    else:  # 3: rotate 180 degrees: the band moves to the right
        _assert_rgb_float(loaded, 32, 48)
        assert red[:, -14:].all() and not red[:, :-18].any()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillow_exif_transpose(tmp_path: Path, orientation: int) -> None:
    pixels = _rgb8(4, 6)
    Image.fromarray(pixels).save(tmp_path / "o.png", exif=_exif(orientation))
    with Image.open(tmp_path / "o.png") as img:
        expected = np.asarray(ImageOps.exif_transpose(img))

    loaded = images.load_image(tmp_path / "o.png")

    np.testing.assert_allclose(loaded * 255, expected, atol=1e-3)


@pytest.mark.parametrize("orientation", [6, 5])
def test_16bit_rgb_png_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    pixels = _rgb8(4, 6)
    cv2.imwrite(str(tmp_path / "deep.png"), pixels[..., ::-1].astype(np.uint16) * 257)
    _add_png_exif(tmp_path / "deep.png", orientation)
    Image.fromarray(pixels).save(tmp_path / "shallow.png", exif=_exif(orientation))
    with Image.open(tmp_path / "shallow.png") as img:
        expected = np.asarray(ImageOps.exif_transpose(img))

    loaded = images.load_image(tmp_path / "deep.png")

    assert expected.shape[:2] == (6, 4)
    np.testing.assert_allclose(loaded * 255, expected, atol=1e-3)


def test_rgba_is_composited_onto_white(tmp_path: Path) -> None:
    pixels = np.zeros((4, 4, 4), np.uint8)
    pixels[..., 0] = 200
    pixels[0, 0, 3] = 255  # opaque
    pixels[0, 1, 3] = 0  # transparent
    pixels[0, 2, 3] = 102  # 40 % opaque
    Image.fromarray(pixels).save(tmp_path / "rgba.png")

    loaded = images.load_image(tmp_path / "rgba.png")

    _assert_rgb_float(loaded, 4, 4)
    np.testing.assert_allclose(loaded[0, 0], [200 / 255, 0, 0], atol=1e-6)
    np.testing.assert_allclose(loaded[0, 1], [1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(loaded[0, 2], [0.4 * 200 / 255 + 0.6, 0.6, 0.6], atol=1e-6)


def test_colour_key_transparency_of_an_rgb_png_is_composited_onto_white(tmp_path: Path) -> None:
    pixels = np.zeros((4, 4, 3), np.uint8)
    pixels[0, 0] = (10, 20, 30)
    Image.fromarray(pixels).save(tmp_path / "key.png", transparency=(0, 0, 0))  # PNG tRNS: black is clear

    loaded = images.load_image(tmp_path / "key.png")

    np.testing.assert_allclose(loaded[0, 0] * 255, [10, 20, 30], atol=1e-3)
    np.testing.assert_allclose(loaded[1:], 1.0)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    grey = np.arange(48 * 32, dtype=np.uint32).reshape(32, 48).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")

    loaded = images.load_image(tmp_path / "grey.png")

    _assert_rgb_float(loaded, 32, 48)
    for channel in range(3):
        np.testing.assert_allclose(loaded[..., channel] * 255, grey, atol=1e-3)


def _palette_image() -> Image.Image:
    img = Image.new("P", (6, 4), 1)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 6))
    img.putpixel((0, 0), 0)
    return img


def test_palette_image_loads_its_colours(tmp_path: Path) -> None:
    _palette_image().save(tmp_path / "p.png")

    loaded = images.load_image(tmp_path / "p.png")

    _assert_rgb_float(loaded, 4, 6)
    np.testing.assert_allclose(loaded[0, 0], [1, 0, 0])
    np.testing.assert_allclose(loaded[1, 1], [0, 0, 1])


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_transparency_is_composited_onto_white(tmp_path: Path, suffix: str) -> None:
    _palette_image().save(tmp_path / f"p{suffix}", transparency=1)  # the blue entry is transparent

    loaded = images.load_image(tmp_path / f"p{suffix}")

    np.testing.assert_allclose(loaded[0, 0], [1, 0, 0])
    np.testing.assert_allclose(loaded[1, 1], [1, 1, 1])


def test_16bit_grayscale_png_keeps_more_than_8_bits(tmp_path: Path) -> None:
    grey = (np.arange(32 * 48).reshape(32, 48) * 37 + 1).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as img:
        assert img.mode.startswith("I;16")

    loaded = images.load_image(tmp_path / "grey16.png")

    _assert_rgb_float(loaded, 32, 48)
    np.testing.assert_allclose(loaded[..., 1] * 65535, grey, atol=0.02)
    assert len(np.unique(loaded)) > 256


def test_32bit_integer_tiff_holding_16bit_values_is_scaled_as_16bit(tmp_path: Path) -> None:
    grey = (np.arange(8 * 12).reshape(8, 12) * 600).astype(np.int32)
    Image.fromarray(grey).save(tmp_path / "grey32.tif")
    with Image.open(tmp_path / "grey32.tif") as img:
        assert img.mode == "I"

    loaded = images.load_image(tmp_path / "grey32.tif")

    np.testing.assert_allclose(loaded[..., 0] * 65535, grey, atol=0.02)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_rgb_keeps_more_than_8_bits_in_rgb_order(tmp_path: Path, suffix: str) -> None:
    rgb = np.zeros((32, 48, 3), np.uint16)
    rgb[..., 0] = 1001  # R, G, B all distinct and none a multiple of 257 (an 8-bit value)
    rgb[..., 1] = 30001
    rgb[..., 2] = np.arange(48, dtype=np.uint16) * 1000 + 7
    cv2.imwrite(str(tmp_path / f"deep{suffix}"), rgb[..., ::-1])  # OpenCV writes BGR

    loaded = images.load_image(tmp_path / f"deep{suffix}")

    _assert_rgb_float(loaded, 32, 48)
    np.testing.assert_allclose(loaded * 65535, rgb, atol=0.02)


def test_cmyk_jpeg_converts_to_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (48, 32), (255, 0, 0, 0)).save(tmp_path / "cyan.jpg", quality=95)  # pure cyan

    loaded = images.load_image(tmp_path / "cyan.jpg")

    _assert_rgb_float(loaded, 32, 48)
    np.testing.assert_allclose(loaded.mean(axis=(0, 1)), [0, 1, 1], atol=0.02)


def test_embedded_srgb_profile_leaves_values_unchanged(tmp_path: Path) -> None:
    pixels = _rgb8()
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(pixels).save(tmp_path / "tagged.png", icc_profile=srgb)

    loaded = images.load_image(tmp_path / "tagged.png")

    np.testing.assert_allclose(loaded * 255, pixels, atol=1.0)


def test_embedded_icc_profile_is_converted_to_srgb(tmp_path: Path) -> None:
    grey = np.full((4, 6), 128, np.uint8)
    Image.fromarray(grey).save(tmp_path / "linear.png", icc_profile=_linear_gray_icc())

    loaded = images.load_image(tmp_path / "linear.png")

    # Linear 128/255 is sRGB-encoded ~0.737 (188/255); read without the profile it would stay 0.502.
    np.testing.assert_allclose(loaded * 255, 188, atol=1.5)


# --- loading errors: one InputError that names the file -------------------------------------------


def _truncated_jpeg(path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_rgb8()).save(buffer, format="JPEG", quality=90)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _truncated_png(path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(_rgb8()).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


BAD_FILES = {
    "missing": (lambda p: None, "not found"),
    "directory": (lambda p: p.mkdir(), "not a file"),
    "empty": (lambda p: p.write_bytes(b""), "empty"),
    "text": (lambda p: p.write_text("not an image\n"), "not an image"),
    "truncated-jpeg": (_truncated_jpeg, "truncated or corrupt"),
    "truncated-png": (_truncated_png, "truncated or corrupt"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_unreadable_input_raises_input_error_naming_the_file(tmp_path: Path, kind: str) -> None:
    make, problem = BAD_FILES[kind]
    path = tmp_path / f"bad-{kind}.jpg"
    make(path)

    with pytest.raises(InputError) as caught:
        images.load_image(path, "style image 1")

    message = str(caught.value)
    assert str(path) in message and problem in message and "style image 1" in message
    assert "\n" not in message


# --- resizing ---------------------------------------------------------------------------------------


def test_resize_takes_width_then_height() -> None:
    assert images.resize(np.zeros((20, 30, 3), np.float32), 15, 10).shape == (10, 15, 3)


def test_resize_shrinks_by_area_averaging() -> None:
    checkerboard = (np.indices((32, 32)).sum(axis=0) % 2).astype(np.float32)[..., None].repeat(3, axis=2)

    small = images.resize(checkerboard, 8, 8)

    np.testing.assert_allclose(small, 0.5, atol=1e-6)  # no aliasing: each output pixel averages 4x4 inputs


def test_resize_enlarges_with_lanczos_clipped_to_unit_range() -> None:
    step = np.zeros((8, 8, 3), np.float32)
    step[:, 4:] = 1.0  # a hard edge: Lanczos rings past 0 and 1

    large = images.resize(step, 32, 32)

    reference = cv2.resize(step, (32, 32), interpolation=cv2.INTER_LANCZOS4)
    assert reference.min() < 0 and reference.max() > 1
    np.testing.assert_allclose(large, np.clip(reference, 0, 1))
    assert large.min() >= 0.0 and large.max() <= 1.0


def test_resize_to_the_same_size_returns_the_input() -> None:
    array = np.random.default_rng(0).random((10, 12, 3)).astype(np.float32)
    assert images.resize(array, 12, 10) is array


def test_resize_accepts_a_non_contiguous_view_from_to_array() -> None:
    array = images.to_array(torch.rand(1, 3, 10, 12))  # a permuted view

    assert images.resize(array, 6, 5).shape == (5, 6, 3)


# --- tensors ----------------------------------------------------------------------------------------


def test_to_tensor_and_to_array_round_trip() -> None:
    array = np.random.default_rng(0).random((10, 12, 3)).astype(np.float32)

    tensor = images.to_tensor(array)

    assert tensor.shape == (1, 3, 10, 12) and tensor.dtype == torch.float32
    np.testing.assert_array_equal(images.to_array(tensor), array)


def test_to_array_clips_to_unit_range() -> None:
    array = images.to_array(torch.tensor([-0.5, 0.5, 1.5]).view(1, 3, 1, 1))
    np.testing.assert_array_equal(array[0, 0], [0.0, 0.5, 1.0])


# --- saving -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix, tolerance", [(".png", 0.0), (".tif", 0.0), (".jpg", 12 / 255)])
def test_save_image_round_trips(tmp_path: Path, suffix: str, tolerance: float) -> None:
    smooth = np.linspace(0, 1, 48 * 32 * 3, dtype=np.float32).reshape(32, 48, 3)
    expected = np.round(smooth * 255) / 255

    written = images.save_image(tmp_path / f"out{suffix}", smooth)

    assert written == tmp_path / f"out{suffix}"
    np.testing.assert_allclose(images.load_image(written), expected, atol=tolerance + 1e-6)


def test_save_image_stores_text_metadata_in_png(tmp_path: Path) -> None:
    images.save_image(tmp_path / "out.png", np.zeros((4, 4, 3)), {"hires-nst": '{"a": 1}'})

    with Image.open(tmp_path / "out.png") as img:
        assert img.text["hires-nst"] == '{"a": 1}'


def test_save_image_leaves_only_the_output_in_the_folder(tmp_path: Path) -> None:
    images.save_image(tmp_path / "out.png", np.zeros((4, 4, 3)))

    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_saved_image_has_the_usual_file_permissions(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)

    images.save_image(tmp_path / "out.png", np.zeros((4, 4, 3)))

    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_save_image_creates_a_missing_output_folder(tmp_path: Path) -> None:
    images.save_image(tmp_path / "a" / "b" / "out.png", np.zeros((4, 4, 3)))
    assert (tmp_path / "a" / "b" / "out.png").is_file()


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), RuntimeError("encoder bug")])
def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  error: Exception) -> None:
    out = tmp_path / "out.png"
    out.write_bytes(b"previous render")

    def failing_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"half an image")  # type: ignore[attr-defined]
        raise error

    monkeypatch.setattr(Image.Image, "save", failing_save)
    expected = OutputError if isinstance(error, OSError) else RuntimeError
    with pytest.raises(expected) as caught:
        images.save_image(out, np.zeros((4, 4, 3)))

    if expected is OutputError:
        assert str(out) in str(caught.value) and "No space left" in str(caught.value)
    assert out.read_bytes() == b"previous render"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


# --- output path checks -----------------------------------------------------------------------------


def test_check_output_path_accepts_a_new_file_in_a_missing_folder_without_creating_it(tmp_path: Path) -> None:
    path = tmp_path / "new" / "out.tif"

    assert images.check_output_path(path) == path
    assert list(tmp_path.iterdir()) == []  # nothing made, not even the probe file


@pytest.mark.parametrize("name", ["out.gif", "out", "out.png.bak"])
def test_check_output_path_rejects_unsupported_extensions(tmp_path: Path, name: str) -> None:
    with pytest.raises(OutputError, match="unsupported extension"):
        images.check_output_path(tmp_path / name)


def test_check_output_path_rejects_a_directory(tmp_path: Path) -> None:
    (tmp_path / "out.png").mkdir()

    with pytest.raises(OutputError, match="is a directory"):
        images.check_output_path(tmp_path / "out.png")


@pytest.mark.parametrize("below", ["out.png", "sub/out.png"])
def test_check_output_path_rejects_a_folder_that_is_a_file(tmp_path: Path, below: str) -> None:
    blocker = tmp_path / "blocker.txt"  # (tests run as root, so a chmod 0500 folder would still be writable)
    blocker.write_text("a file, not a folder")

    with pytest.raises(OutputError) as caught:
        images.check_output_path(blocker / below)

    assert str(blocker) in str(caught.value) and "not a folder" in str(caught.value)


def test_an_image_too_large_for_the_free_memory_is_refused_before_it_is_decoded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (1000, 800)).save(path)  # a few kB on disk, 0.8 MP to decode
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or real_load(self))
    monkeypatch.setattr(images, "host_available_bytes", lambda: 10 * 2**20)

    with pytest.raises(InputError, match=r"content image big\.png is 1000x800 \(0\.8 MP\).*about \d+ MB of memory"
                                         r".*10 MB .*available"):
        images.load_image(path, "content image")
    assert decoded == []
    monkeypatch.setattr(images, "host_available_bytes", lambda: 2**30)
    assert images.load_image(path).shape == (800, 1000, 3)
