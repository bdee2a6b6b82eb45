"""cache.py: a network built once per process is handed out again only as it was built."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from hires_nst.model.cache import ExtractorCache, extractor_key, weights_identity

CPU = torch.device("cpu")


class Builds:
    """A build function that counts its calls and makes a small frozen network, as extractors are."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> nn.Module:
        self.count += 1
        net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(4))
        return net.requires_grad_(False).eval()


def test_a_kept_network_is_handed_out_again_without_a_build() -> None:
    cache, build = ExtractorCache(), Builds()

    first = cache.get(("a",), build)
    second = cache.get(("a",), build)

    assert second is first and build.count == 1


def test_moving_it_to_its_device_and_to_channels_last_is_no_change() -> None:
    """What ``place`` does to every extractor: the next render must still find it warm."""
    cache, build = ExtractorCache(), Builds()
    net = cache.get(("a",), build)
    net.to(CPU).to(memory_format=torch.channels_last)

    assert cache.get(("a",), build) is net and build.count == 1


def _hook(net: nn.Module) -> None:
    net[0].register_forward_hook(lambda module, args, out: None)


def _grad(net: nn.Module) -> None:
    net[0].weight.grad = torch.ones_like(net[0].weight)


def _scaled(net: nn.Module) -> None:
    with torch.no_grad():
        net[0].weight.mul_(2)


def _buffer(net: nn.Module) -> None:
    net[2].running_mean.add_(1)


CHANGES: dict[str, Callable[[nn.Module], object]] = {
    "a forward hook": _hook,
    "a forward pre-hook": lambda net: net[1].register_forward_pre_hook(lambda module, args: None),
    "a backward hook": lambda net: net[0].register_full_backward_hook(lambda module, gin, gout: None),
    "a parameter that requires grad": lambda net: net[0].weight.requires_grad_(True),
    "a gradient left on a parameter": _grad,
    "training mode": lambda net: net[2].train(),
    "weights changed in place": _scaled,
    "a buffer changed in place": _buffer,
    "weights loaded over": lambda net: net.load_state_dict(Builds()().state_dict()),
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_a_network_changed_after_it_was_handed_out_is_built_anew(change: Callable[[nn.Module], object]) -> None:
    cache, build = ExtractorCache(), Builds()
    used = cache.get(("a",), build)
    change(used)

    fresh = cache.get(("a",), build)

    assert fresh is not used and build.count == 2
    assert cache.get(("a",), build) is fresh and build.count == 2  # the fresh one is kept in its place


def test_without_a_key_every_call_builds() -> None:
    cache, build = ExtractorCache(), Builds()

    assert cache.get(None, build) is not cache.get(None, build)
    assert build.count == 2 and cache.keys() == []


def test_the_least_recently_used_network_goes_first() -> None:
    cache, build = ExtractorCache(size=2), Builds()
    a = cache.get(("a",), build)
    cache.get(("b",), build)
    cache.get(("a",), build)  # a is now the most recently used
    cache.get(("c",), build)  # b goes

    assert cache.keys() == [("a",), ("c",)] and cache.get(("a",), build) is a and build.count == 3
    cache.clear()
    assert cache.keys() == []


def test_random_weights_are_never_kept_and_fixed_sources_always_are() -> None:
    assert extractor_key("vgg19", "random", "auto", "max", ["conv1_1"], CPU) is None
    assert extractor_key("vgg19", "original", "auto", "max", ["conv1_1"], CPU) == (
        "vgg19", "original", "auto", "max", ("conv1_1",), "cpu")
    assert extractor_key("vgg19", "torchvision", "auto", "max", ["conv1_1"], CPU) is not None


def test_the_key_changes_with_everything_the_network_depends_on() -> None:
    base = dict(backbone="vgg19", weights="original", preprocessing="auto", pooling="max", layers=["conv1_1"],
                device=CPU)
    variants = [dict(backbone="vgg16"), dict(weights="torchvision"), dict(preprocessing="caffe"),
                dict(pooling="avg"), dict(layers=["conv1_1", "conv2_1"]), dict(device=torch.device("meta"))]

    keys = {extractor_key(**{**base, **variant}) for variant in variants} | {extractor_key(**base)}  # type: ignore[arg-type]

    assert len(keys) == len(variants) + 1


def test_a_weights_file_saved_again_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    assert weights_identity(str(path)) is None  # missing: built, and the loader says why

    torch.save({"a": torch.zeros(2)}, path)
    first = weights_identity(str(path))
    torch.save({"a": torch.zeros(3)}, path)
    os.utime(path, ns=(1, 1))

    assert first is not None and weights_identity(str(path)) not in (None, first)
    assert weights_identity(str(tmp_path / "." / "w.pth")) == weights_identity(str(path))  # one file, one key
