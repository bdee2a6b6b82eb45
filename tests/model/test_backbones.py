"""Backbones: VGG19, VGG16 and ResNet-50 built with random weights, their layers, weights and tiling rules."""

from __future__ import annotations

import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import ResNet50_Weights, VGG16_Weights

from hires_nst.config.catalog import BACKBONES, VGG_BLOCKS, alias, get_backbone
from hires_nst.config.schedule import Stage
from hires_nst.config.settings import resolve
from hires_nst.core.tiles import plan_tiles, required_halo
from hires_nst.engine import plan as stageplan
from hires_nst.engine.objective import Objective, Weights, make_targets
from hires_nst.engine.render import RenderJob, render
from hires_nst.engine.tiling import TiledObjective, make_objective
from hires_nst.errors import ConfigError, DeviceError, WeightsError
from hires_nst.events import Step
from hires_nst.io import images
from hires_nst.model.backbones import ResNetFeatures, build_extractor
from hires_nst.model.features import VGGFeatures
from hires_nst.model.weights import load_weights
from hires_nst.runtime.placement import Placement
from tests.helpers.synthetic import tiles_for


def _random(backbone: str, seed: int = 0):
    torch.manual_seed(seed)
    return load_weights("random", backbone=backbone)


def _image(height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))


# --- every backbone, random weights ---------------------------------------------------------------

@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_each_backbone_builds_with_random_weights_and_yields_its_default_layers(backbone: str) -> None:
    spec = get_backbone(backbone)
    extractor = build_extractor(backbone, _random(backbone), spec.content_layers + spec.style_layers)
    with torch.no_grad():
        out = extractor(_image(64, 96))
    assert set(out) == set(spec.content_layers + spec.style_layers)
    for name, tensor in out.items():
        info = spec.info(name)
        assert tuple(tensor.shape) == (1, info.channels, 64 >> info.depth, 96 >> info.depth), name
        assert torch.isfinite(tensor).all() and tensor.abs().sum() > 0, name
    assert extractor.preprocessing == "torchvision" and "random" in extractor.source


def test_the_documented_default_layers() -> None:
    assert (BACKBONES["vgg19"].content_layers, BACKBONES["vgg19"].style_layers) == (
        ("conv4_2",), ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"))
    assert BACKBONES["vgg16"].style_layers == BACKBONES["vgg19"].style_layers
    assert (BACKBONES["resnet50"].content_layers, BACKBONES["resnet50"].style_layers) == (
        ("layer2",), ("stem", "layer1", "layer2", "layer3"))
    assert [len(BACKBONES[b].layers) for b in BACKBONES] == [16, 13, 17]  # 16 and 13 convs; stem + 16 blocks


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_listed_layer_has_the_channels_and_downsampling_the_network_gives(backbone: str) -> None:
    spec = get_backbone(backbone)
    extractor = build_extractor(backbone, _random(backbone), [i.name for i in spec.layers])
    with torch.no_grad():
        out = extractor(_image(64, 64))
    assert [tuple(out[i.name].shape[1:]) for i in spec.layers] == [
        (i.channels, 64 >> i.depth, 64 >> i.depth) for i in spec.layers]
    assert extractor.min_size == 2 ** max(i.depth for i in spec.layers)


def test_layer_names_aliases_and_errors() -> None:
    vgg16, resnet = get_backbone("vgg16"), get_backbone("resnet50")
    assert vgg16.canonical("relu5_3") == "conv5_3"
    with pytest.raises(ConfigError, match="unknown layer 'conv5_4' for vgg16; valid layers: conv1_1, .*conv5_3 "):
        vgg16.canonical("conv5_4")
    assert resnet.canonical("layer3_6") == "layer3" and resnet.canonical("layer3_2") == "layer3_2"
    with pytest.raises(ConfigError, match="unknown layer 'conv4_2' for resnet50; valid layers: stem, layer1_1, "):
        resnet.canonical("conv4_2")
    assert (alias("relu4_2"), alias("layer4_3"), alias("layer4_2"), alias("stem")) == (
        "conv4_2", "layer4", "layer4_2", "stem")
    with pytest.raises(ConfigError, match="unknown backbone 'vgg11'; use vgg19, vgg16, resnet50"):
        get_backbone("vgg11")
    with pytest.raises(ConfigError, match="--backbone .* must be one of vgg19, vgg16, resnet50"):
        resolve(("test", {"model": {"backbone": "vgg11"}}))


def test_the_config_takes_the_backbones_default_layers_unless_given() -> None:
    resnet = resolve(("test", {"model": {"backbone": "resnet50", "weights": "random"}}))
    assert resnet.loss.content_layers == ("layer2",)
    assert resnet.loss.style_layers == ("stem", "layer1", "layer2", "layer3")
    given = resolve(("test", {"model": {"backbone": "resnet50", "weights": "random"},
                              "loss": {"content_layers": "layer3_2", "style_layers": "stem,layer4"}}))
    assert given.loss.content_layers == ("layer3_2",) and given.loss.style_layers == ("stem", "layer4")
    assert resolve(("test", {"model": {"backbone": "vgg16", "weights": "random"}})).loss.content_layers == ("conv4_2",)
    with pytest.raises(ConfigError, match="unknown layer 'conv4_2' for resnet50"):
        resolve(("test", {"model": {"backbone": "resnet50", "weights": "random"},
                          "loss": {"content_layers": "conv4_2"}}))


# --- ResNet-50 ------------------------------------------------------------------------------------

def test_resnet_is_frozen_in_eval_mode_and_differentiable_in_the_input() -> None:
    extractor = ResNetFeatures(_random("resnet50"), ["stem", "layer2"])
    assert not any(m.training for m in extractor.modules())  # batch norm uses its running statistics
    assert all(not p.requires_grad for p in extractor.parameters())
    image = _image(32, 32).requires_grad_(True)
    extractor(image)["layer2"].sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    # Eval-mode batch norm: an image's features do not depend on what else is in the batch.
    with torch.no_grad():
        alone = extractor(_image(32, 32))["layer2"]
        batched = extractor(torch.cat([_image(32, 32), _image(32, 32, seed=5)]))["layer2"][:1]
    torch.testing.assert_close(alone, batched)


def test_resnet_stops_after_the_deepest_requested_block() -> None:
    weights = _random("resnet50")
    assert len(ResNetFeatures(weights, ["stem"]).blocks) == 1
    assert len(ResNetFeatures(weights, ["layer2"]).blocks) == 1 + 3 + 4
    assert ResNetFeatures(weights, ["layer1_2", "stem"]).names == ["stem", "layer1_1", "layer1_2"]
    avg = ResNetFeatures(weights, ["layer1_1"], pooling="avg")
    assert isinstance(avg.blocks[1][0], nn.AvgPool2d)


def _resnet_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet50().state_dict()  # with fc: what torch.save(model.state_dict()) holds


def test_resnet_weights_from_torchvision_drop_the_classifier(monkeypatch: pytest.MonkeyPatch) -> None:
    full, calls = _resnet_state(), []

    def fake(self, *args, **kwargs):
        calls.append(kwargs)
        return full

    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", fake)
    loaded = load_weights("torchvision", backbone="resnet50")
    assert "fc.weight" not in loaded.state_dict and "layer4.2.bn3.running_var" in loaded.state_dict
    assert loaded.preprocessing == "torchvision" and loaded.source == "torchvision ResNet50_Weights.IMAGENET1K_V1"
    assert calls[0]["weights_only"] is True
    ResNetFeatures(loaded, ["layer4"])


def test_resnet_weights_from_a_file(tmp_path: Path) -> None:
    state = {k: v for k, v in _resnet_state().items() if not k.endswith("num_batches_tracked")}  # older files lack them
    torch.save(state, tmp_path / "r.pth")
    loaded = load_weights(str(tmp_path / "r.pth"), backbone="resnet50")
    assert torch.equal(loaded.state_dict["conv1.weight"], state["conv1.weight"])
    ResNetFeatures(loaded, ["stem"])
    torch.save(load_weights("random", backbone="vgg19").state_dict, tmp_path / "vgg.pth")
    with pytest.raises(WeightsError, match="not ResNet-50 weights \\(missing conv1.weight\\)"):
        load_weights(str(tmp_path / "vgg.pth"), backbone="resnet50")


# --- VGG16 ----------------------------------------------------------------------------------------

def test_vgg16_weights_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="original .* only for VGG19"):
        load_weights("original", backbone="vgg16")
    with pytest.raises(ConfigError, match="--weights .* only for --backbone vgg19"):
        resolve(("test", {"model": {"backbone": "vgg16"}}))

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(VGG16_Weights, "get_state_dict", offline)
    with pytest.raises(WeightsError, match="VGG16 weights could not be downloaded .*name resolution.*--weights FILE"
                                           ".*--weights random.*--backbone vgg19"):
        load_weights("torchvision", backbone="vgg16")
    with torch.device("meta"):
        keys = torchvision.models.vgg16().state_dict().keys()
    random = _random("vgg16").state_dict
    torch.save({k: random[k[len("features."):]] if k.startswith("features.") else torch.zeros(2) for k in keys},
               tmp_path / "vgg16.pth")
    loaded = load_weights(str(tmp_path / "vgg16.pth"), backbone="vgg16")
    assert sorted(loaded.state_dict) == sorted(random)
    assert torch.equal(loaded.state_dict["28.weight"], random["28.weight"])
    with pytest.raises(WeightsError, match="not VGG19 weights \\(missing features.16.weight\\)"):
        load_weights(str(tmp_path / "vgg16.pth"), backbone="vgg19")


def test_vgg16_needs_less_halo_than_vgg19_after_its_shorter_blocks() -> None:
    assert required_halo(["conv5_1"], VGG_BLOCKS["vgg16"]) == 64
    assert required_halo(["conv5_1"]) == required_halo(["conv5_1"], VGG_BLOCKS["vgg19"]) == 80
    assert required_halo(["conv4_3"], VGG_BLOCKS["vgg16"]) == required_halo(["conv4_3"]) == 48


def test_vgg16_tiled_loss_and_gradient_equal_the_untiled_ones_at_its_own_halo() -> None:
    width, height = 160, 128
    extractor = VGGFeatures(_random("vgg16"), ["conv1_1", "conv3_3", "conv5_1"], arch="vgg16")
    weights = Weights.equal_layers(1.0, 10.0, 0.0, ["conv3_3"], ["conv1_1", "conv5_1"])
    targets = make_targets(extractor, _image(height, width, 1), [_image(96, 80, 2)], [1.0], weights)
    tiled = make_objective(extractor, targets, weights, tiles_for(extractor, width, height, 64))
    assert isinstance(tiled, TiledObjective) and len(tiled.tiles) == 6
    assert tiled.tiles[0].window.right == 64 + 64  # VGG16's conv5_1 halo
    untiled_image, tiled_image = _image(height, width, 3), _image(height, width, 3)
    expected = Objective(extractor, targets, weights)(untiled_image)
    got = tiled(tiled_image)
    for key in ("total", "content", "style"):
        assert float(got[key]) == pytest.approx(float(expected[key]), rel=1e-5), key
    assert float((tiled_image.grad - untiled_image.grad).norm() / untiled_image.grad.norm()) < 1e-4


# --- ResNet is never tiled --------------------------------------------------------------------------

def test_resnet_refuses_a_forced_tile_and_runs_untiled_on_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="--tile-size .*tiling is exact only for VGG backbones"):
        resolve(("test", {"model": {"backbone": "resnet50", "weights": "random"}, "tiling": {"tile_size": "256"}}))
    config = resolve(("test", {"model": {"backbone": "resnet50", "weights": "random"}}))
    monkeypatch.setattr(stageplan, "available_bytes", lambda device: 2**20)  # 1 MiB: a VGG stage would be tiled
    stage = Stage(0, 1024, 768, 1)
    plan = stageplan.make_plan(config, [stage], None, Placement.single(nn.Identity()))
    assert plan.stages[0].tiling == stageplan.Tiling(None, 0, 1)
    with pytest.raises(DeviceError, match="resnet50 renders cannot be tiled"):
        plan.smaller(plan.stages[0])
    extractor = ResNetFeatures(_random("resnet50"), ["stem"])
    weights = Weights.equal_layers(0.0, 1.0, 0.0, [], ["stem"])
    targets = make_targets(extractor, None, [_image(32, 32)], [1.0], weights)
    with pytest.raises(ConfigError, match="tiling is exact only for VGG backbones"):
        make_objective(extractor, targets, weights, plan_tiles(128, 128, 64, 0))


def test_a_tiny_resnet_render_with_random_weights_lowers_the_loss(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("c.png", "s.png"):
        images.save_image(tmp_path / name, rng.random((48, 64, 3)).astype(np.float32))
    config = resolve(("test", {"model": {"backbone": "resnet50", "weights": "random"},
                               "optim": {"optimizer": "adam"}, "pyramid": {"max_size": 64, "iterations": [6]},
                               "output": {"work_dir": str(tmp_path / "work")}}))
    events: list = []
    result = render(RenderJob(tmp_path / "c.png", (tmp_path / "s.png",), tmp_path / "out.png", config), events.append)
    steps = [e.losses["total"] for e in events if isinstance(e, Step)]
    assert len(steps) == 6 and result.losses["total"] < steps[0]
    record = json.loads(result.settings.read_text())
    assert record["config"]["model"]["backbone"] == "resnet50" and "random ResNet-50" in record["weights"]
