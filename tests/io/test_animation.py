"""--animate: snapshots from the engine, one fixed frame size, GIF, WebM and MP4 frame counts."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from hires_nst.config.settings import resolve
from hires_nst.core import color
from hires_nst.engine.render import RenderJob, render
from hires_nst.errors import ConfigError, OutputError
from hires_nst.events import Snapshot
from hires_nst.io import images
from hires_nst.io.animation import AnimationRecorder, frame_size


def _job(tmp_path: Path, animate: str, iterations=(5, 3), every: int = 2, size: int = 512, **loss) -> RenderJob:
    rng = np.random.default_rng(0)
    images.save_image(tmp_path / "c.png", rng.random((48, 64, 3)).astype(np.float32))
    images.save_image(tmp_path / "s.png", rng.random((40, 40, 3)).astype(np.float32))
    config = resolve(("test", {
        "pyramid": {"min_size": 32, "max_size": 64, "iterations": list(iterations)},
        "loss": {"content_layers": ["conv2_1"], "style_layers": ["conv1_1", "conv2_1"], **loss},
        "optim": {"optimizer": "adam", "lr": 0.05},
        "output": {"work_dir": str(tmp_path / "work"), "animate": animate, "animate_every": every,
                   "animate_size": size}}))
    return RenderJob(tmp_path / "c.png", (tmp_path / "s.png",), tmp_path / "out.png", config)


def expected_frames(iterations, every: int) -> int:
    """The start image, then every N-th and each stage's last iteration."""
    return 1 + sum(math.ceil(i / every) for i in iterations)


def test_snapshots_come_at_the_start_every_n_iterations_and_at_each_stages_end(tmp_path: Path) -> None:
    events: list = []
    render(_job(tmp_path, str(tmp_path / "a.gif")), events.append)
    snaps = [e for e in events if isinstance(e, Snapshot)]
    assert [(s.stage, s.iteration) for s in snaps] == [(0, 0), (0, 2), (0, 4), (0, 5), (1, 2), (1, 3)]
    assert [s.image.shape for s in snaps] == [(24, 32, 3)] * 4 + [(48, 64, 3)] * 2
    assert len(snaps) == expected_frames((5, 3), 2) == 6


def test_sparse_reports_still_give_a_frame_per_n_iterations(tmp_path: Path) -> None:
    job = _job(tmp_path, str(tmp_path / "a.gif"), iterations=(21, 3), every=7)
    job = RenderJob(**{**job.__dict__, "config": resolve(("test", {**job.config.to_dict(),
                                                                   "device": {"sync_every": 10}}))})
    events: list = []
    render(job, events.append)
    snaps = [(e.stage, e.iteration) for e in events if isinstance(e, Snapshot)]
    assert snaps == [(0, 0), (0, 10), (0, 20), (0, 21), (1, 3)]  # reports at 10, 20, 21: one past each 7th


def test_no_snapshots_without_animate(tmp_path: Path) -> None:
    events: list = []
    render(_job(tmp_path, ""), events.append)
    assert not any(isinstance(e, Snapshot) for e in events)


def test_gif_has_the_expected_frame_count_at_one_size(tmp_path: Path) -> None:
    gif = tmp_path / "anim" / "a.gif"
    # The frames show each stage's best point so far; a GIF holds a repeated frame as one, so the
    # step here is small enough that every reported point improves on the last.
    job = _job(tmp_path, str(gif), iterations=(4, 3), every=3)
    render(RenderJob(**{**job.__dict__, "config": resolve(("test", {**job.config.to_dict(),
                                                                    "optim": {"optimizer": "adam", "lr": 0.005}}))}))
    with Image.open(gif) as img:
        assert img.n_frames == expected_frames((4, 3), 3) == 4  # start, 3, 4 | 3
        assert img.size == (64, 48)  # the output's size: --animate-size 512 never enlarges past it
        assert img.info.get("loop") == 0


@pytest.mark.parametrize("suffix, codecs", [(".mp4", ("FMP4", "MP4V")), (".webm", ("VP90", "VP80"))])
def test_videos_have_the_expected_frame_count_and_even_sides(tmp_path: Path, suffix: str, codecs: tuple[str, str],
                                                             capfd: pytest.CaptureFixture[str]) -> None:
    mp4 = tmp_path / f"a{suffix}"
    render(_job(tmp_path, str(mp4), iterations=(5, 3), every=2, size=33))
    assert "FFMPEG" not in capfd.readouterr().err  # no notes from the codec library on stderr
    video = cv2.VideoCapture(str(mp4))
    assert int(video.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("ascii", "replace").upper() in codecs
    frames = []
    while True:
        ok, frame = video.read()
        if not ok:
            break
        frames.append(frame)
    assert len(frames) == expected_frames((5, 3), 2) == 6
    assert frames[0].shape == (24, 32, 3)  # 33 x 25 rounded down to even sides for the codec
    assert not list(tmp_path.glob(f".a*.tmp{suffix}"))


def test_frame_size_keeps_the_aspect_and_never_enlarges() -> None:
    assert frame_size(4000, 3000, 512, even=False) == (512, 384)
    assert frame_size(300, 200, 512, even=False) == (300, 200)
    assert frame_size(3000, 4001, 511, even=True) == (382, 510)


def test_recorder_resizes_every_snapshot_to_the_frame_and_applies_the_transform(tmp_path: Path) -> None:
    recorder = AnimationRecorder(tmp_path / "x.gif", 400, 300, 40, transform=lambda image: 1.0 - image)
    recorder(Snapshot(0, 0, np.zeros((6, 8, 3), np.float32)))
    recorder(Snapshot(1, 4, np.full((60, 80, 3), 0.5, np.float32)))
    assert [f.shape for f in recorder.frames] == [(30, 40, 3), (30, 40, 3)]
    assert recorder.frames[0].min() == 255 and recorder.frames[1].max() in (127, 128)
    with pytest.raises(OutputError, match="no frames"):
        AnimationRecorder(tmp_path / "y.gif", 40, 30, 40).write()


def test_luminance_renders_animate_in_the_photos_colours(tmp_path: Path) -> None:
    gif = tmp_path / "lum.gif"
    render(_job(tmp_path, str(gif), iterations=(2, 1), every=1, preserve_color="luminance"))
    with Image.open(gif) as img:
        img.seek(0)
        first = np.asarray(img.convert("RGB"), dtype=np.float32) / 255
    chroma = np.abs(color.rgb_to_yiq(first)[..., 1:]).mean()
    assert chroma > 0.02  # a grey frame would have none


@pytest.mark.parametrize("animate, message", [("a.png", "--animate .* must end in .gif, .webm or .mp4"),
                                              ("a.gif", None)])
def test_animate_path_is_checked_with_the_other_settings(tmp_path: Path, animate: str, message: str | None) -> None:
    settings = ("test", {"output": {"animate": str(tmp_path / animate)}})
    if message:
        with pytest.raises(ConfigError, match=message):
            resolve(settings)
    else:
        assert resolve(settings).output.animate.endswith("a.gif")
    with pytest.raises(ConfigError, match="--animate-every .* must be >= 1"):
        resolve(("test", {"output": {"animate_every": 0}}))
