"""Image files in and out: every input becomes float32 RGB in [0, 1]; outputs are written atomically.

Loading uses Pillow (EXIF orientation, ICC profiles, every mode) and OpenCV for 16-bit colour,
which Pillow silently truncates to 8 bits. Resizing uses OpenCV: area averaging to shrink (no
aliasing), Lanczos to enlarge.

Over 300 lines on purpose: reading (EXIF, ICC, 16-bit, limits) and atomic writing of every image format.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import io
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
import torch
from PIL import Image, ImageCms, UnidentifiedImageError
from torch import Tensor

from hires_nst.errors import DiskFullError, InputError, OutputError
from hires_nst.io import encode16

FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
DEFAULT_MAX_INPUT_PIXELS = 250_000_000  # a 20000x12500 scan; Pillow's own default stops at ~89 MP
SETTINGS_KEY = "hires-nst"  # PNG text key of the settings; TIFF keeps them in ImageDescription
ALPHA_BACKGROUND = 1.0  # transparent areas are composited onto white, as they would print


def load_image(path: str | os.PathLike, what: str = "image",
               max_pixels: int = DEFAULT_MAX_INPUT_PIXELS) -> np.ndarray:
    """Read an image file as (H, W, 3) float32 RGB in [0, 1]; ``what`` names it in errors.

    Images with more than ``max_pixels`` pixels are refused before they are decoded: a small
    file can claim a gigapixel canvas (a decompression bomb) and exhaust memory.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise InputError(f"{what} not found: {path}") from None
    except OSError as exc:  # a folder on the way that cannot be entered
        raise InputError(f"{what} cannot be read: {path} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(f"{what} is not a file: {path}")
    if info.st_size == 0:
        raise InputError(f"{what} is an empty file: {path}")
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise InputError(f"{what} cannot be read: {path} ({exc.strerror or exc})") from None
    with handle, _decode(handle, path, what, max_pixels) as img:
        try:
            array = _to_rgb_array(img, path)
        except (OSError, ValueError, cv2.error) as exc:
            raise InputError(f"{what} has a colour format that cannot be turned into RGB ({img.mode}): "
                             f"{path} ({exc})") from None
    return np.ascontiguousarray(array, dtype=np.float32)


def image_size(path: str | os.PathLike) -> tuple[int, int] | None:
    """(width, height) from the file's header, without decoding; None if it cannot be read (a FIFO
    or a device is never opened: nobody may be writing to it, and opening it would wait for ever)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        with _no_pillow_pixel_limit(), Image.open(path) as img:
            return img.size
    except Exception:  # any unreadable file: the render itself reports it properly
        return None


@contextlib.contextmanager
def _no_pillow_pixel_limit() -> Iterator[None]:
    """Pillow's own bomb check (a process-wide limit) is replaced by ``max_pixels``, checked by us."""
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _decode(handle: BinaryIO, path: Path, what: str, max_pixels: int) -> Image.Image:
    """Open and fully decode, so that a truncated file fails here and not halfway through a render."""
    try:
        with _no_pillow_pixel_limit():
            img = Image.open(handle)
        width, height = img.size
        if width * height > max_pixels:
            img.close()
            raise InputError(f"{what} is too large to load safely: {path} is {width}x{height} "
                             f"({_count(width * height)}), above the limit of {_count(max_pixels)}; "
                             "if you trust the file, raise --max-input-pixels")
        _check_memory_to_decode(img, path, what)
        img.load()
        return img
    except UnidentifiedImageError:
        raise InputError(f"{what} is not an image file Pillow can read: {path}") from None
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # a damaged file makes Pillow's decoders raise OSError, EOFError, struct.error...
        raise InputError(f"{what} is truncated or corrupt: {path} ({_one_line(exc)})") from None


# Bytes per pixel of Pillow's decoded image, by mode (8-bit colour is stored as 4 bytes a pixel).
DECODED_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 4, "PA": 4, "I;16": 2, "I;16B": 2, "I;16L": 2}
# Besides the decoded image, loading holds a converted 8-bit copy and two float32 RGB(A) arrays.
WORKING_BYTES_PER_PIXEL = 4 + 2 * 16


def host_available_bytes() -> int:
    """Memory the host can give without swapping (Linux's MemAvailable; free pages elsewhere)."""
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def _check_memory_to_decode(img: Image.Image, path: Path, what: str) -> None:
    """Refuse, before decoding, an image whose pixels would not fit in the free memory: a file of a
    few hundred kB can hold a canvas that takes gigabytes once decoded."""
    width, height = img.size
    needed = width * height * (DECODED_BYTES.get(img.mode, 4) + WORKING_BYTES_PER_PIXEL)
    available = host_available_bytes()
    if needed > available:
        img.close()
        raise InputError(f"{what} {path.name} is {width}x{height} ({_count(width * height)}): loading it takes "
                         f"about {_bytes(needed)} of memory and {_bytes(available)} is available; free some memory "
                         f"or give a smaller copy of {path}")


def _bytes(size: int) -> str:
    return f"{size / 2**20:,.0f} MB" if size < 10 * 2**30 else f"{size / 2**30:,.1f} GB"


def _count(pixels: int) -> str:
    return f"{pixels / 1e6:.1f} MP" if pixels >= 100_000 else f"{pixels} pixels"


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _to_rgb_array(img: Image.Image, path: Path) -> np.ndarray:
    orientation = _orientation(img)
    deep = _read_16bit_colour(path, img)
    if deep is not None:
        return _orient(deep, orientation)
    return _orient(_pillow_to_rgb(img), orientation)


def _pillow_to_rgb(img: Image.Image) -> np.ndarray:
    """Every Pillow mode (greyscale up to 32-bit, palette, CMYK, alpha) -> (H, W, 3) in [0, 1]."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        grey: np.ndarray = np.asarray(img, dtype=np.float32)
        if img.mode.startswith("I;16") or (img.mode == "I" and grey.max(initial=0) <= 65535):
            grey = grey / 65535.0  # Pillow widens 16-bit greyscale (PGM, TIFF, ...) to "I"
        elif img.mode == "I":
            grey = grey / (2**31 - 1)
        return np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=2)
    img = _to_srgb(img)
    # Alpha, or a palette/colour-key transparency (PNG tRNS, GIF): composite onto the background.
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3:]
        return rgba[..., :3] * alpha + ALPHA_BACKGROUND * (1.0 - alpha)
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8); 1 when absent or unreadable (a damaged EXIF block is no reason to fail)."""
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # Pillow's EXIF parser raises many types on damaged data
        return 1


def _read_16bit_colour(path: Path, img: Image.Image) -> np.ndarray | None:
    """16-bit RGB(A) PNG/TIFF through OpenCV; None for anything else."""
    if img.format not in ("PNG", "TIFF") or img.mode not in ("RGB", "RGBA"):
        return None
    data = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if data is None or data.dtype != np.uint16 or data.ndim != 3:
        return None
    data = data.astype(np.float32) / 65535.0
    if data.shape[2] == 4:
        alpha = data[..., 3:]
        data = data[..., :3] * alpha + ALPHA_BACKGROUND * (1.0 - alpha)
    return data[..., ::-1]  # BGR -> RGB


def _orient(array: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W, C) array."""
    ops = {2: (0, True), 3: (2, False), 4: (2, True), 5: (3, True), 6: (3, False), 7: (1, True), 8: (1, False)}
    turns, flip = ops.get(orientation, (0, False))
    array = np.rot90(array, turns)
    return array[:, ::-1] if flip else array


def _to_srgb(img: Image.Image) -> Image.Image:
    """Convert through the embedded ICC profile (CMYK, Adobe RGB, ...) to sRGB when there is one."""
    icc = img.info.get("icc_profile")
    if not icc or img.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return img.convert("RGB") if img.mode == "CMYK" else img
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        out_mode = "RGBA" if img.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode=out_mode)
        assert converted is not None  # None only when converting in place
        return converted
    except (ImageCms.PyCMSError, OSError, ValueError):
        return img.convert("RGB") if img.mode == "CMYK" else img


def resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize (H, W, 3): area averaging when shrinking, Lanczos when enlarging (clipped to [0, 1])."""
    old_h, old_w = array.shape[:2]
    if (old_w, old_h) == (width, height):
        return array
    shrinking = width * height < old_w * old_h
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4
    out = cv2.resize(array, (width, height), interpolation=interpolation)
    return np.clip(out, 0.0, 1.0)


def to_tensor(array: np.ndarray) -> Tensor:
    """(H, W, 3) float array -> (1, 3, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).unsqueeze(0).float()


def to_array(image: Tensor) -> np.ndarray:
    """(1, 3, H, W) tensor -> (H, W, 3) float32 array clipped to [0, 1]."""
    return image.detach().float().clamp(0, 1)[0].permute(1, 2, 0).cpu().numpy()


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail now, not after hours of rendering, if ``path`` cannot be written.

    Creates nothing: a render that fails later must not leave empty folders behind.
    """
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise OutputError(f"output {path}: unsupported extension {path.suffix!r}; use .png, .jpg or .tif")
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        is_dir = False
    except OSError as exc:  # a folder on the way that cannot be entered
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    if is_dir:
        raise OutputError(f"output {path} is a directory")
    folder = nearest_existing(path.parent)
    if not folder.is_dir():
        raise OutputError(f"cannot write {path}: {folder} is a file, not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".hires-nst-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    return path


def nearest_existing(folder: str | os.PathLike) -> Path:
    """``folder`` or the closest of its ancestors that exists (the output folder is made when writing).

    OutputError if a folder on the way cannot be entered: that is a message, not a crash."""
    folder = Path(os.path.abspath(folder))
    while folder.parent != folder:
        try:
            os.stat(folder)
            return folder
        except (FileNotFoundError, NotADirectoryError):
            folder = folder.parent
        except OSError as exc:
            raise OutputError(f"cannot use {folder}: {exc.strerror or exc}") from None
    return folder


def save_image(path: str | os.PathLike, array: np.ndarray, text: Mapping[str, str] | None = None, *,
               dpi: int | None = None, bit_depth: int = 8) -> Path:
    """Write (H, W, 3) [0, 1] to ``path`` atomically: a temp file in the same folder, then rename.

    Every file gets an sRGB ICC profile (inputs are converted to sRGB on load, so the render is
    sRGB) and, if given, its DPI. ``text`` goes into PNG text chunks, the TIFF ImageDescription and
    the JPEG comment. ``bit_depth`` 16 writes 16-bit PNG/TIFF; JPEG is always 8-bit.
    """
    path = check_output_path(path)
    fmt = FORMATS[path.suffix.lower()]
    text = dict(text or {})
    if fmt == "TIFF":  # 8 or 16 bits, through tifffile (BigTIFF past 4 GB)
        pixels = encode16.to_uint16(array) if bit_depth == 16 else _to_uint8(array)
        write_atomically(path, lambda f: encode16.write_tiff(f, pixels, dpi=dpi, icc=srgb_profile(),
                                                             description=_description(text) if text else None))
        return path
    if bit_depth == 16 and fmt == "PNG":
        pixels = encode16.to_uint16(array)
        write_atomically(path, lambda f: encode16.write_png16(f, pixels, dpi=dpi, icc=srgb_profile(), text=text))
        return path
    image = Image.fromarray(_to_uint8(array))  # (H, W, 3) uint8 -> RGB
    options = {**_save_options(fmt, text), "icc_profile": srgb_profile()}
    if dpi:
        options["dpi"] = (dpi, dpi)
    write_atomically(path, lambda f: image.save(f, format=fmt, **options))
    return path


def png_text(path: str | os.PathLike) -> dict[str, str]:
    """The text chunks of a PNG (``save_image``'s ``text``); {} for another file or one that cannot be read."""
    try:
        with Image.open(path) as img:
            return dict(getattr(img, "text", {})) if img.format == "PNG" else {}
    except (OSError, ValueError, SyntaxError):
        return {}


def _to_uint8(array: np.ndarray) -> np.ndarray:
    return np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)


@functools.cache
def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _description(text: Mapping[str, str]) -> str:
    return text.get(SETTINGS_KEY, "\n".join(text.values()))


def _save_options(fmt: str, text: Mapping[str, str]) -> dict:
    if fmt == "JPEG":
        comment = {"comment": _description(text)} if text else {}
        return {"quality": 95, "subsampling": 0, **comment}
    if fmt == "PNG" and text:
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in text.items():
            info.add_itxt(key, value)
        return {"pnginfo": info}
    return {}


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, then rename it over ``path``.

    A crash or a full disk leaves the old ``path`` (or nothing) and no temp file, never half an image.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise
    _fsync_folder(path.parent)


TEMP_SUFFIX = ".part"  # write_atomically's temp files: ``.NAME.XXXXXXXX.part`` beside NAME
TEMP_RANDOM = 8  # the random letters mkstemp puts in a name (tests/io/test_writeplan.py checks it)


def temp_name(name: str) -> str:
    """The name of write_atomically's temp file for ``name``: it, not ``name``, must fit the filesystem."""
    return f".{name}.{'X' * TEMP_RANDOM}{TEMP_SUFFIX}"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def write_error(path: Path, exc: OSError) -> OutputError:
    """The error for a failed write of ``path``: a full disk is a DiskFullError (worth retrying later)."""
    kind = DiskFullError if exc.errno in DISK_FULL else OutputError
    return kind(f"cannot write {path}: {exc.strerror or exc}")


def temp_files(folder: Path, name: str = "*") -> list[Path]:
    """write_atomically's temp files for ``name`` in ``folder`` (left behind only by a killed process)."""
    try:
        return sorted(Path(folder).glob(f".{name if name == '*' else glob.escape(name)}.*{TEMP_SUFFIX}"))
    except OSError:
        return []


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import: os.umask can only be read by setting it
