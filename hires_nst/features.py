"""The VGG19 feature extractor: frozen, truncated after the deepest layer in use.

Layer names follow the paper: ``convB_C`` is the *rectified* response of that convolution, as in
Gatys et al.'s Caffe model, whose in-place ReLU overwrites the conv output. ``reluB_C`` names the
same tensor. The network uses zero padding everywhere, which the exact tiling relies on.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn
from torchvision.models.vgg import cfgs, make_layers

from hires_nst.errors import ConfigError, WeightsError
from hires_nst.weights import CONV_INDICES, VGGWeights

BLOCK_SIZES = (2, 2, 4, 4, 4)
LAYER_NAMES = tuple(f"conv{b}_{c}" for b, n in enumerate(BLOCK_SIZES, 1) for c in range(1, n + 1))
# conv name -> index of its ReLU in vgg19().features
_RELU_INDEX = {name: index + 1 for name, index in zip(LAYER_NAMES, CONV_INDICES)}
POOLINGS = ("max", "avg")
# Pooling steps in front of each block: a tile offset must be a multiple of 2**this (DESIGN.md 6).
POOLS_BEFORE = {name: int(name[4]) - 1 for name in LAYER_NAMES}
DEFAULT_CONTENT_LAYERS = ("conv4_2",)
DEFAULT_STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def canonical_layer(name: str) -> str:
    """Map ``reluB_C`` to ``convB_C``; reject unknown names with the list of valid ones."""
    conv = "conv" + name[4:] if name.startswith("relu") else name
    if conv not in _RELU_INDEX:
        valid = ", ".join(LAYER_NAMES)
        raise ConfigError(f"unknown layer {name!r}; valid layers: {valid} (or relu* for the same)")
    return conv


def vgg19_body() -> nn.Sequential:
    """torchvision's VGG19 ``features`` architecture, without building the big classifier."""
    return make_layers(cfgs["E"], batch_norm=False)


class VGGFeatures(nn.Module):
    """Maps an RGB image in [0, 1], (1, 3, H, W), to ``{layer: (1, C, H / 2**k, W / 2**k)}``."""

    def __init__(self, weights: VGGWeights, layers: Iterable[str], pooling: str = "max") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"unknown pooling {pooling!r}; use max or avg")
        self.layers = tuple(dict.fromkeys(canonical_layer(n) for n in layers))
        if not self.layers:
            raise ConfigError("no feature layers requested")
        body = vgg19_body()
        try:
            body.load_state_dict(weights.state_dict)
        except RuntimeError as exc:  # a hand-made VGGWeights that skipped check_shapes
            raise WeightsError(f"{weights.source}: the weights do not fit VGG19 ({exc})") from None
        last = max(_RELU_INDEX[n] for n in self.layers)
        modules = [nn.AvgPool2d(2, 2) if isinstance(m, nn.MaxPool2d) and pooling == "avg" else m for m in body[: last + 1]]
        self.body = nn.Sequential(*modules)
        self._taps = {_RELU_INDEX[n]: n for n in self.layers}
        self.preprocessing = weights.preprocessing
        self.source = weights.source
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))
        self.register_buffer("scale", torch.ones(1, 3, 1, 1))
        self._set_preprocessing(weights.preprocessing)
        self.requires_grad_(False)
        self.eval()

    def _set_preprocessing(self, kind: str) -> None:
        # x_net = (x - shift) * scale, with channel order handled in forward for Caffe's BGR.
        if kind == "caffe":
            self.shift.copy_(torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1) / 255.0)
            self.scale.fill_(255.0)
        else:
            self.shift.copy_(torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
            self.scale.copy_(1.0 / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    @property
    def min_size(self) -> int:
        """Smallest input side that leaves every requested layer at least one pixel."""
        return 2 ** max(POOLS_BEFORE[n] for n in self.layers)

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        if self.preprocessing == "caffe":
            image = image.flip(1)  # RGB -> BGR
        x = (image - self.shift) * self.scale
        out = {}
        for index, module in enumerate(self.body):
            x = module(x)
            if index in self._taps:
                out[self._taps[index]] = x
        return out
