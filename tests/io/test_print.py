"""Print sizes, print-ready files (DPI, sRGB profile, 16 bits, settings inside), input limits, and the
guards that keep a night's work: deferred signals during checkpoint writes, the disk-space check."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from hires_nst.config.printsize import paper_pixels, print_plan
from hires_nst.config.settings import resolve
from hires_nst.engine.plan import plan_schedule
from hires_nst.engine.render import RenderJob, render
from hires_nst.errors import ConfigError, InputError, Interrupted, OutputError
from hires_nst.events import StageStarted
from hires_nst.io import images, safety
from hires_nst.io.encode16 import to_uint16
from tests.helpers.synthetic import write_image

Usage = collections.namedtuple("Usage", "total used free")


# --- print-size arithmetic ------------------------------------------------------------------------


@pytest.mark.parametrize("size, dpi, pixels", [
    ("A4", 300, (2480, 3508)), ("a3", 300, (3508, 4961)), ("A2", 300, (4961, 7016)),
    ("letter", 300, (2550, 3300)), ("8x10in", 300, (2400, 3000)), ("300x400mm", 254, (3000, 4000)),
    ("30x40cm", 254, (3000, 4000)), ("A4", 150, (1240, 1754)),
])
def test_paper_sizes_in_pixels(size: str, dpi: int, pixels: tuple[int, int]) -> None:
    assert paper_pixels(size, dpi) == pixels


def test_auto_orientation_turns_the_paper_like_the_photo() -> None:
    assert print_plan("A4", 300, "crop", "auto", 1024, 768).width == 3508  # landscape photo: landscape paper
    assert print_plan("A4", 300, "crop", "auto", 768, 1024).width == 2480
    assert print_plan("A4", 300, "crop", "landscape", 768, 1024).width == 3508


def test_fit_keeps_the_whole_photo_inside_the_paper() -> None:
    # A 4:3 photo is less elongated than A4 (1.414): its height limits; width 2480 * 4/3 = 3307.
    plan = print_plan("A4", 300, "fit", "auto", 1024, 768)
    assert (plan.width, plan.height, plan.crop) == (3307, 2480, None)


def test_crop_fills_the_paper_by_centre_cropping_the_photo_to_its_aspect_ratio() -> None:
    plan = print_plan("A4", 300, "crop", "auto", 1024, 768)
    assert (plan.width, plan.height) == (3508, 2480)
    assert plan.crop == (0, 22, 1024, 746)  # 724 rows of 768 kept: 1024 / 724 = 3508 / 2480


def test_print_size_sets_the_schedule_and_overrides_max_size() -> None:
    layers = {"print": {"print_size": "A4", "dpi": 300, "fit": "crop"}, "pyramid": {"max_size": 512}}
    schedule, crop = plan_schedule(resolve(("test", layers)), 768, 1024)
    assert (schedule[-1].width, schedule[-1].height) == (2480, 3508)
    assert [s.height for s in schedule] == [128, 256, 512, 1024, 2048, 3508]
    assert crop == (22, 0, 746, 1024)  # the 3:4 photo is a little wider than A4: 724 of 768 columns kept
    layers["print"]["fit"] = "fit"
    schedule, crop = plan_schedule(resolve(("test", layers)), 768, 1024)
    assert (schedule[-1].width, schedule[-1].height, crop) == (2480, 3307, None)


@pytest.mark.parametrize("settings, expected", [
    ({"print_size": "A9"}, "--print-size 'A9': use a paper name (A0, A1"),
    ({"print_size": "20x30"}, "WxH with a unit"),
    ({"print_size": "A4", "dpi": 1}, "only 8x12 pixels"),
    ({"dpi": 0}, "--dpi (print.dpi) must be between"),
    ({"fit": "stretch"}, "--fit (print.fit) must be one of fit, crop"),
])
def test_bad_print_settings_name_the_option(settings: dict, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        resolve(("test", {"print": settings}))


# --- files written for print ----------------------------------------------------------------------


def _is_srgb(icc: bytes) -> bool:
    import io

    profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return "sRGB" in ImageCms.getProfileDescription(profile)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
def test_8bit_outputs_carry_dpi_srgb_profile_and_settings(tmp_path: Path, suffix: str) -> None:
    out = images.save_image(tmp_path / f"out{suffix}", np.full((4, 5, 3), 0.5), {"hires-nst": '{"a": 1}'}, dpi=300)
    with Image.open(out) as img:
        assert img.info["dpi"] == pytest.approx((300, 300), abs=0.01)
        assert _is_srgb(img.info["icc_profile"])
        text = {".png": lambda: img.info["hires-nst"], ".tif": lambda: img.tag_v2[270],
                ".jpg": lambda: img.info["comment"].decode()}[suffix]()
        assert json.loads(text) == {"a": 1}


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_outputs_keep_16_bits_dpi_profile_and_settings(tmp_path: Path, suffix: str) -> None:
    array = np.random.default_rng(0).random((7, 9, 3)).astype(np.float32)
    out = images.save_image(tmp_path / f"out{suffix}", array, {"hires-nst": '{"a": 1}'}, dpi=600, bit_depth=16)
    stored = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert stored.dtype == np.uint16 and np.array_equal(stored, to_uint16(array))
    assert np.any(stored % 257 != 0)  # not 8-bit values widened
    with Image.open(out) as img:  # Pillow reads the metadata (and decodes to 8 bits)
        assert img.size == (9, 7)
        assert img.info["dpi"] == pytest.approx((600, 600), abs=0.01)
        assert _is_srgb(img.info["icc_profile"])
        if suffix == ".tif":
            assert img.tag_v2[258] == (16, 16, 16) and json.loads(img.tag_v2[270]) == {"a": 1}
        else:
            assert json.loads(img.info["hires-nst"]) == {"a": 1}
        img.load()
        assert np.abs(np.asarray(img).astype(int) - (stored >> 8)).max() <= 1
    assert np.abs(images.load_image(out) - array).max() < 1e-4  # our own loader reads all 16 bits


def test_input_over_the_pixel_limit_is_refused_with_how_to_raise_it(tmp_path: Path) -> None:
    path = write_image(tmp_path / "c.png")
    with pytest.raises(InputError, match=r"48x40 \(1920 pixels\), above the limit of 1000 pixels.*--max-input-pixels"):
        images.load_image(path, "content image", max_pixels=1000)
    assert images.load_image(path, max_pixels=1920).shape == (40, 48, 3)


def test_a_decompression_bomb_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 MP in a file of a few kB
    assert bomb.stat().st_size < 200_000
    with pytest.raises(InputError, match=r"20000x20000 \(400.0 MP\), above the limit of 250.0 MP"):
        images.load_image(bomb, "content image")


# --- never lose work ------------------------------------------------------------------------------


def test_signals_wait_for_the_end_of_a_deferred_block() -> None:
    before = signal.getsignal(signal.SIGTERM)
    reached_the_end = False
    with pytest.raises(KeyboardInterrupt):
        with safety.deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            reached_the_end = True
    assert reached_the_end
    assert signal.getsignal(signal.SIGTERM) is before


def _job(tmp_path: Path, **settings) -> RenderJob:
    content, style = write_image(tmp_path / "c.png"), write_image(tmp_path / "s.png", 40, 48, seed=1)
    layers = {"pyramid": {"min_size": 32, "max_size": 64, "iterations": [2]},
              "output": {"work_dir": str(tmp_path / "work")}}
    for section, values in settings.items():
        layers.setdefault(section, {}).update(values)
    return RenderJob(content, (style,), tmp_path / "out" / "out.png", resolve(("test", layers)))


def test_ctrl_c_during_a_checkpoint_write_finishes_the_checkpoint_then_stops(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = torch.save

    def save_and_get_interrupted(obj, handle) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # arrives while stage 1's checkpoint is being written
        real_save(obj, handle)

    monkeypatch.setattr(torch, "save", save_and_get_interrupted)
    with pytest.raises(Interrupted, match=r"after stage 1/2; 1 finished stage\(s\) kept.*--resume"):
        render(_job(tmp_path))
    monkeypatch.setattr(torch, "save", real_save)
    kept = sorted(p.name for p in (tmp_path / "work").glob("stage-0.*"))
    assert kept == ["stage-0.json", "stage-0.png", "stage-0.pt"]

    events: list = []
    render(RenderJob(**{**_job(tmp_path).__dict__, "resume": True}), events.append)
    assert [e.stage for e in events if isinstance(e, StageStarted)] == [1]


def test_a_full_disk_is_reported_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - 2**20, 2**20))
    job = _job(tmp_path)
    with pytest.raises(OutputError, match=r"not enough disk space in .*needs about 6\d MB.*1 MB is free"):
        render(job)
    assert not (tmp_path / "work").exists() and not (tmp_path / "out").exists()


def test_needs_on_one_filesystem_are_added_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    free = 200 * 2**20
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - free, free))
    safety.check_free_space({tmp_path / "a": 50 * 2**20, tmp_path / "b": 50 * 2**20})  # 120 + 64 margin < 200
    with pytest.raises(OutputError):
        safety.check_free_space({tmp_path / "a": 60 * 2**20, tmp_path / "b": 60 * 2**20})  # 144 + 64 > 200


# --- a print render ---------------------------------------------------------------------------------


def test_print_render_crops_to_the_paper_and_writes_a_16bit_tiff_at_its_dpi(tmp_path: Path) -> None:
    # 10x8 mm at 127 dpi = 50x40 px; the 48x40 photo is cropped to 48x38 (aspect 1.25) first.
    job = _job(tmp_path, print={"print_size": "10x8mm", "dpi": 127, "fit": "crop"}, output={"bit_depth": 16},
               pyramid={"max_size": 999})
    job = RenderJob(**{**job.__dict__, "output": tmp_path / "out" / "print.tif"})
    result = render(job)
    assert (result.width, result.height) == (50, 40)
    with Image.open(result.output) as img:
        assert img.size == (50, 40) and img.tag_v2[258] == (16, 16, 16)
        assert img.info["dpi"] == pytest.approx((127, 127))
        assert json.loads(img.tag_v2[270])["config"]["print"]["print_size"] == "10x8mm"
    settings = json.loads(result.settings.read_text())
    assert settings["crop"] == [0, 1, 48, 39] and settings["dpi"] == 127


def test_print_options_reach_the_engine_config(tmp_path: Path, fake_render: list[RenderJob]) -> None:
    from typer.testing import CliRunner

    from hires_nst.cli.main import app

    jobs = fake_render
    result = CliRunner().invoke(app, [
        "render", "c.png", "s.png", "-o", str(tmp_path / "print"), "--print-size", "30x40cm", "--dpi", "150",
        "--fit", "crop", "--orientation", "landscape", "--bit-depth", "16", "--format", "tif",
        "--max-input-pixels", "1000000", "-q"])
    assert result.exit_code == 0, result.output
    config = jobs[0].config
    assert (config.print.print_size, config.print.dpi, config.print.fit, config.print.orientation) == (
        "30x40cm", 150, "crop", "landscape")
    assert (config.output.bit_depth, config.output.format, config.input.max_input_pixels) == (16, "tif", 1_000_000)


def test_an_output_without_extension_takes_the_format() -> None:
    from hires_nst.engine.outputs import output_path

    assert output_path(Path("out/a3"), "tif") == Path("out/a3.tif")
    assert output_path(Path("out/a3"), "") == Path("out/a3.png")
    assert output_path(Path("out/a3.jpg"), "tif") == Path("out/a3.jpg")  # the extension given wins


def test_a_print_too_small_for_the_network_advises_the_dpi_not_max_size() -> None:
    config = resolve(("test", {"print": {"print_size": "1x1in", "dpi": 16}}))
    with pytest.raises(ConfigError) as error:
        plan_schedule(config, 48, 40)
    message = str(error.value)
    assert "--max-size" not in message and "--print-size 1x1in at --dpi 16" in message
    needed = int(message.split("use --dpi ")[1].split()[0])
    schedule, _ = plan_schedule(resolve(("test", {"print": {"print_size": "1x1in", "dpi": needed}})), 48, 40)
    assert min(schedule[-1].width, schedule[-1].height) >= 16  # the advice works, and is the least that does
    with pytest.raises(ConfigError):
        plan_schedule(resolve(("test", {"print": {"print_size": "1x1in", "dpi": needed - 1}})), 48, 40)
