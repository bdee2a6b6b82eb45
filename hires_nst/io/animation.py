"""``--animate``: the image as it evolves over every stage, as an animated GIF (Pillow), or a video
through OpenCV: WebM (VP9, else VP8), which browsers play, or MP4 (mp4v: OpenCV's headless build has
no H.264, and browsers do not play mp4v).

Frames come from the engine's ``Snapshot`` events: the first stage's starting image, then every N
iterations and each stage's last iteration, so a render of stages with ``I_s`` iterations has
``1 + sum(ceil(I_s / N))`` frames (a resumed render: only the stages it runs). Every frame is
resized to one fixed size, that of the output shrunk to ``--animate-size`` (never enlarged past
the output), so the early, small stages are enlarged into the same frame.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from hires_nst.config.schedule import fit_long_side
from hires_nst.errors import OutputError
from hires_nst.events import Event, Snapshot
from hires_nst.io import images

FRAME_MS = 100  # 10 frames per second
VIDEO_CODECS = {".webm": ("VP90", "VP80"), ".mp4": ("mp4v",)}  # fourccs, the first that opens wins
HOLD_LAST_MS = 1500  # the GIF rests on the final image before it loops


def frame_size(width: int, height: int, long_side: int, even: bool) -> tuple[int, int]:
    """The output's size shrunk to ``long_side`` (not enlarged); even sides where a codec needs them."""
    width, height = fit_long_side(width, height, min(long_side, max(width, height)))
    if even:
        width, height = max(2, width // 2 * 2), max(2, height // 2 * 2)
    return width, height


class AnimationRecorder:
    """An event sink that keeps each ``Snapshot`` as an 8-bit frame; ``write`` makes the file.

    ``transform`` maps a snapshot (h, w, 3) to the image to show, e.g. putting the photo's chroma
    back on a luminance-only render.
    """

    def __init__(self, path: Path, width: int, height: int, long_side: int,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        """``width`` x ``height``: the output's size; frames get ``frame_size`` of it."""
        self.path = Path(path)
        self.suffix = self.path.suffix.lower()
        self.size = frame_size(width, height, long_side, even=self.suffix in VIDEO_CODECS)  # 4:2:0 needs even
        self.transform = transform
        self.frames: list[np.ndarray] = []  # (h, w, 3) uint8 RGB

    def __call__(self, event: Event) -> None:
        if isinstance(event, Snapshot):
            image = self.transform(event.image) if self.transform else event.image
            frame = images.resize(np.ascontiguousarray(image, dtype=np.float32), *self.size)
            self.frames.append(np.round(frame * 255).astype(np.uint8))

    def write(self) -> Path:
        """Write every frame so far (atomically: a crash leaves no half file)."""
        if not self.frames:
            raise OutputError(f"--animate {self.path}: no frames were recorded")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.suffix == ".gif":
            self._write_gif()
        else:
            self._write_video()
        return self.path

    def _write_gif(self) -> None:
        from PIL import Image

        frames = [Image.fromarray(f).quantize(256, dither=Image.Dither.FLOYDSTEINBERG) for f in self.frames]
        durations = [FRAME_MS] * (len(frames) - 1) + [HOLD_LAST_MS]
        # Pillow merges a frame identical to the one before into it (adding the durations).
        images.write_atomically(self.path, lambda f: frames[0].save(
            f, format="GIF", save_all=True, append_images=frames[1:], duration=durations, loop=0))

    def _write_video(self) -> None:
        import cv2

        temporary = self.path.with_name(f".{self.path.stem}.{os.getpid()}.tmp{self.suffix}")
        codecs = VIDEO_CODECS[self.suffix]
        for code in codecs:
            with _quiet_stderr():  # FFmpeg notes that WebM keeps no fourcc tag, on stderr, each time
                writer = cv2.VideoWriter(str(temporary), cv2.VideoWriter.fourcc(*code), 1000 / FRAME_MS, self.size)
            if writer.isOpened():
                break
        else:
            raise OutputError(f"--animate {self.path}: OpenCV cannot write {self.suffix} here "
                              f"(no {' or '.join(codecs)} encoder); use .gif")
        try:
            for frame in self.frames:
                writer.write(np.ascontiguousarray(frame[..., ::-1]))  # OpenCV wants BGR
            writer.release()
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null meanwhile (native code prints there, not to sys.stderr)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
