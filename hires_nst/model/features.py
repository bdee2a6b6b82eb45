"""The VGG19 (and VGG16) feature extractor: frozen, truncated after the deepest layer in use.

Layer names follow the paper: ``convB_C`` is the *rectified* response of that convolution, as in
Gatys et al.'s Caffe model, whose in-place ReLU overwrites the conv output. ``reluB_C`` names the
same tensor. The network uses zero padding everywhere, which the exact tiling relies on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from hires_nst.config.catalog import POOLINGS, POOLS_BEFORE, VGG_BLOCKS, VGG_DISPLAY, canonical_layer, vgg_layer_names
from hires_nst.errors import ConfigError, WeightsError
from hires_nst.model.pooling import recomputing
from hires_nst.model.weights import VGG_LAYOUTS, VGGWeights, vgg_body


def _relu_indices(arch: str) -> dict[str, int]:
    """conv name -> index of its ReLU in torchvision's ``features`` of ``arch``."""
    convs = [i for i, v in enumerate(_cfg_modules(arch)) if v == "conv"]
    return {name: index + 1 for name, index in zip(vgg_layer_names(arch), convs, strict=True)}


def _cfg_modules(arch: str) -> list[str]:
    """The kinds of the modules ``vgg_body`` builds for ``arch``: conv, relu, pool."""
    return [kind for v in VGG_LAYOUTS[arch] for kind in (("pool",) if v == "M" else ("conv", "relu"))]


CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocess(nn.Module):
    """RGB in [0, 1] -> what the weights were trained on: ``(x - shift) * scale``, BGR for Caffe."""

    shift: Tensor  # buffers (register_buffer)
    scale: Tensor

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "caffe":  # BGR, 0..255, mean subtracted
            shift, scale = torch.tensor(CAFFE_MEAN_BGR) / 255.0, torch.full((3,), 255.0)
        else:  # ImageNet mean/std normalisation
            shift, scale = torch.tensor(IMAGENET_MEAN), 1.0 / torch.tensor(IMAGENET_STD)
        self.register_buffer("shift", shift.view(1, 3, 1, 1))
        self.register_buffer("scale", scale.view(1, 3, 1, 1))

    def forward(self, image: Tensor) -> Tensor:
        if self.kind == "caffe":
            image = image.flip(1)  # RGB -> BGR
        return (image - self.shift) * self.scale


class FrozenExtractor(nn.Module):
    """What every backbone's extractor shares: the requested layers, the weights' preprocessing,
    frozen eval mode, and a forward pass through ``_sequence()`` that keeps the tapped outputs."""

    tileable = False
    pools_before: dict[str, int]

    def __init__(self, weights: VGGWeights, layers: Iterable[str], pooling: str,
                 canonical: Callable[[str], str]) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; use max or avg")
        self.layers = tuple(dict.fromkeys(canonical(n) for n in layers))
        if not self.layers:
            raise ConfigError("no feature layers requested")
        self.preprocessing, self.source = weights.preprocessing, weights.source
        self.preprocess = Preprocess(weights.preprocessing)
        self._taps: tuple[str | None, ...] = ()  # per module of _sequence(): the layer it yields, if requested

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.eval()

    def _sequence(self) -> Iterable[nn.Module]:
        raise NotImplementedError

    @property
    def min_size(self) -> int:
        """Smallest input side that leaves every requested layer at least one pixel (nominal stride)."""
        return 2 ** max(self.pools_before.values())

    def forward(self, image: Tensor, reduce: Callable[[str, Tensor], Any] | None = None) -> dict[str, Any]:
        """``{layer: features}``; with ``reduce``, ``{layer: reduce(layer, features)}`` instead,
        called as the network reaches each layer.

        Why reduce on the way: a loss term taken at its layer sits next to that layer in the
        autograd graph, so the backward pass handles it when it gets there and frees its buffers
        on the way, instead of starting with every layer's term (and their full-size gradients) at
        once; and a no-grad pass then holds no feature map past its own layer.
        """
        x = self.preprocess(image)
        out: dict[str, Any] = {}
        for tap, module in zip(self._taps, self._sequence(), strict=True):
            x = module(x)
            if tap is not None:
                out[tap] = x if reduce is None else reduce(tap, x)
        return out


def load_into(net: nn.Module, weights: VGGWeights, display: str) -> None:
    """Fill ``net`` with ``weights``; a mismatch (a hand-made VGGWeights that skipped check_shapes)
    names the file and the architecture."""
    try:
        net.load_state_dict(weights.state_dict)
    except RuntimeError as exc:
        raise WeightsError(f"{weights.source}: the weights do not fit {display} ({exc})") from None


class VGGFeatures(FrozenExtractor):
    """Maps an RGB image in [0, 1], (1, 3, H, W), to ``{layer: (1, C, H / 2**k, W / 2**k)}``."""

    tileable = True  # zero padding and 2x2 poolings only: exact tiling holds (tiling.py)

    def __init__(self, weights: VGGWeights, layers: Iterable[str], pooling: str = "max", arch: str = "vgg19") -> None:
        if arch not in VGG_BLOCKS:
            raise ConfigError(f"unknown VGG {arch!r}; use {' or '.join(VGG_BLOCKS)}")
        super().__init__(weights, layers, pooling, lambda name: canonical_layer(name, arch))
        self.arch, self.block_sizes = arch, VGG_BLOCKS[arch]
        body = vgg_body(arch)
        load_into(body, weights, VGG_DISPLAY[arch])
        relu_index = _relu_indices(arch)
        last = max(relu_index[n] for n in self.layers)
        # Max pooling keeps no int64 indices for the backward pass (pooling.py): same gradients.
        modules = [nn.AvgPool2d(2, 2) if isinstance(m, nn.MaxPool2d) and pooling == "avg" else recomputing(m)
                   for m in body[: last + 1]]
        self.body = nn.Sequential(*modules)
        tapped = {relu_index[n]: n for n in self.layers}
        self._taps = tuple(tapped.get(i) for i in range(len(modules)))
        self.pools_before = {n: POOLS_BEFORE[n] for n in self.layers}
        self._freeze()

    def _sequence(self) -> Iterable[nn.Module]:
        return self.body
