"""Everything a configuration can name, as plain data: backbones and their layers, poolings,
precisions, optimisers. No torch here, so that ``config`` can validate names without importing the engine.

VGG layers are ``convB_C`` (``reluB_C`` is the same tensor); ResNet-50's are described in
``backbones``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hires_nst.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
STYLE_LOSSES = ("gram", "w2")
COLOR_MODES = ("off", "luminance", "match")  # --preserve-color (core/color.py)
PHOTO_SMOOTHING = ("off", "guided", "affinity")  # --photo-smooth (core/matting.py: smooth)
# --optimizer: the names config validates, optimize builds (make_optimizer) and memmodel sizes, in
# --help's order (config's list and optimize's used to differ in it).
OPTIMIZERS = ("lbfgs", "adam", "adamw", "sgd", "adagrad", "adadelta", "rmsprop", "lbfgs-torch")
LBFGS_OPTIMIZERS = ("lbfgs", "lbfgs-torch")  # those that keep curvature pairs (memmodel.lbfgs_history)

VGG_BLOCKS = {"vgg19": (2, 2, 4, 4, 4), "vgg16": (2, 2, 3, 3, 3)}
VGG_DISPLAY = {"vgg19": "VGG19", "vgg16": "VGG16"}
VGG_CHANNELS = (64, 128, 256, 512, 512)  # per block, in both
BLOCK_SIZES = VGG_BLOCKS["vgg19"]


def vgg_layer_names(arch: str = "vgg19") -> tuple[str, ...]:
    return tuple(f"conv{b}_{c}" for b, n in enumerate(VGG_BLOCKS[arch], 1) for c in range(1, n + 1))



LAYER_NAMES = vgg_layer_names("vgg19")
POOLINGS = ("max", "avg")
# Pooling steps in front of each block: a tile offset must be a multiple of 2**this (DESIGN.md 6).
# The same for every VGG: the blocks differ only in how many convolutions they hold.
POOLS_BEFORE = {name: int(name[4]) - 1 for name in LAYER_NAMES}
DEFAULT_CONTENT_LAYERS = ("conv4_2",)
DEFAULT_STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")


def canonical_layer(name: str, arch: str = "vgg19") -> str:
    """Map ``reluB_C`` to ``convB_C``; reject unknown names with the list of valid ones."""
    conv = "conv" + name[4:] if name.startswith("relu") else name
    names = vgg_layer_names(arch)
    if conv not in names:
        valid = ", ".join(names)
        raise ConfigError(f"unknown layer {name!r} for {arch}; valid layers: {valid} (or relu* for the same)")
    return conv



RESNET_BLOCKS = (3, 4, 6, 3)  # bottleneck blocks in layer1..layer4 of ResNet-50
RESNET_CHANNELS = (256, 512, 1024, 2048)



@dataclass(frozen=True)
class LayerInfo:
    name: str
    channels: int
    depth: int  # maps are 1 / 2**depth of the input
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Backbone:
    """A backbone's layer names, their shapes and its default layers."""

    name: str
    layers: tuple[LayerInfo, ...]
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    tileable: bool

    def canonical(self, name: str) -> str:
        """The layer's canonical name (aliases resolved); unknown names list the valid ones."""
        for info in self.layers:
            if name == info.name or name in info.aliases:
                return info.name
        valid = ", ".join(i.name for i in self.layers)
        alias = " (or relu* for the same)" if self.name.startswith("vgg") else " (or layerB_K for the last block)"
        raise ConfigError(f"unknown layer {name!r} for {self.name}; valid layers: {valid}{alias}")

    def info(self, name: str) -> LayerInfo:
        canonical = self.canonical(name)
        return next(i for i in self.layers if i.name == canonical)

    def min_side(self, layers: Iterable[str]) -> int:
        """Smallest input side that leaves every one of ``layers`` at least one pixel: VGG's 2x2
        poolings floor a 1-pixel map to nothing ("Output size is too small")."""
        return int(2 ** max((self.info(n).depth for n in layers), default=0))


def _vgg(arch: str) -> Backbone:
    layers = tuple(LayerInfo(f"conv{b}_{c}", VGG_CHANNELS[b - 1], b - 1, (f"relu{b}_{c}",))
                   for b, n in enumerate(VGG_BLOCKS[arch], 1) for c in range(1, n + 1))
    return Backbone(arch, layers, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, tileable=True)


def _resnet50() -> Backbone:
    layers = [LayerInfo("stem", 64, 1)]
    for stage, (blocks, channels) in enumerate(zip(RESNET_BLOCKS, RESNET_CHANNELS, strict=True), 1):
        for block in range(1, blocks):
            layers.append(LayerInfo(f"layer{stage}_{block}", channels, stage + 1))
        layers.append(LayerInfo(f"layer{stage}", channels, stage + 1, (f"layer{stage}_{blocks}",)))
    return Backbone("resnet50", tuple(layers), ("layer2",), ("stem", "layer1", "layer2", "layer3"), tileable=False)


BACKBONES = {"vgg19": _vgg("vgg19"), "vgg16": _vgg("vgg16"), "resnet50": _resnet50()}


def get_backbone(name: str) -> Backbone:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; use {', '.join(BACKBONES)}")
    return BACKBONES[name]


def alias(name: str) -> str:
    """The canonical name of a layer of any backbone, without checking that it exists.

    Backbones' names never collide, so this is safe where the backbone is not at hand (the loss
    weights); names are validated against the backbone by the config and by the extractor.
    """
    for backbone in BACKBONES.values():
        for info in backbone.layers:
            if name in info.aliases:
                return info.name
    return name


