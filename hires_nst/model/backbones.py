"""Feature networks behind one interface: VGG19 (default), VGG16 and ResNet-50.

Every extractor maps an RGB image in [0, 1], (1, 3, H, W), to ``{layer: (1, C, h, w)}`` and carries
``layers``, ``min_size``, ``preprocessing``, ``source``, ``pools_before`` (log2 of each layer's
downsampling) and ``tileable``. Only the VGGs are tileable: the exactness rules of tiling.py
(DESIGN.md 6) are derived for 3x3 zero-padded convolutions and 2x2 poolings. ResNet-50's 7x7
stride-2 stem, 3x3 stride-2 pooling and stride-2 convolutions would need their own rules (a 32 px
grid, a halo of about the receptive-field radius: ~135 px at layer3, ~215 px at layer4), which are
not implemented, so ResNet renders always run untiled.

ResNet-50 layer names: ``stem`` (conv1 + bn1 + ReLU, 1/2), ``layerB_K`` the output of bottleneck
block K of torchvision's ``layerB``, and ``layerB`` the output of its last block (``layer3`` is
``layer3_6``). Default layers follow VGG's by downsampling and receptive field: content ``layer2``
(1/8, receptive field 91 px in torchvision's stride-on-3x3 ResNet; VGG's conv4_2 is 1/8, 84 px),
style ``stem``, ``layer1``, ``layer2``, ``layer3`` (1/2 .. 1/16, as conv1_1 .. conv5_1).
``layer4`` (1/32, 2048 channels) is available.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from torch import Tensor, nn

from hires_nst.config.catalog import BACKBONES, get_backbone
from hires_nst.model.features import FrozenExtractor, VGGFeatures, load_into
from hires_nst.model.weights import VGGWeights, trunk


class FeatureExtractor(Protocol):
    """What the objective, the pyramid and the tiling need from a feature network."""

    layers: tuple[str, ...]
    preprocessing: str  # "caffe" | "torchvision"
    source: str  # where the weights came from, for the settings record
    pools_before: dict[str, int]  # layer -> k: its maps are 1/2**k of the input
    tileable: bool

    @property
    def min_size(self) -> int: ...

    def __call__(self, image: Tensor) -> dict[str, Tensor]: ...


class ResNetFeatures(FrozenExtractor):
    """ResNet-50 features, frozen, batch norm in eval mode, truncated after the deepest layer."""

    def __init__(self, weights: VGGWeights, layers: Iterable[str], pooling: str = "max") -> None:
        spec = BACKBONES["resnet50"]
        super().__init__(weights, layers, pooling, spec.canonical)
        net = trunk("resnet50")
        load_into(net, weights, "ResNet-50")
        # "avg" swaps the stem's 3x3 max pooling for an average one (the only pooling ResNet has).
        pool = net.get_submodule("maxpool") if pooling == "max" else nn.AvgPool2d(3, 2, 1, count_include_pad=False)
        stem = nn.Sequential(net.get_submodule("conv1"), net.get_submodule("bn1"), net.get_submodule("relu"))
        names, modules = ["stem"], [stem]
        for stage in range(1, 5):
            blocks = list(getattr(net, f"layer{stage}"))
            for index, block in enumerate(blocks, 1):
                names.append(f"layer{stage}" if index == len(blocks) else f"layer{stage}_{index}")
                modules.append(nn.Sequential(pool, block) if names[-1] == "layer1_1" else block)
        last = max(names.index(n) for n in self.layers)
        self.names, self.blocks = names[: last + 1], nn.ModuleList(modules[: last + 1])
        self._taps = tuple(n if n in self.layers else None for n in self.names)
        self.pools_before = {n: spec.info(n).depth for n in self.layers}
        self._freeze()

    def _sequence(self) -> Iterable[nn.Module]:
        return self.blocks


def build_extractor(backbone: str, weights: VGGWeights, layers: Iterable[str],
                    pooling: str = "max") -> FrozenExtractor:
    """The extractor for ``backbone`` (see ``FeatureExtractor``) with ``weights`` loaded."""
    get_backbone(backbone)
    if backbone == "resnet50":
        return ResNetFeatures(weights, layers, pooling)
    return VGGFeatures(weights, layers, pooling, arch=backbone)

