"""Several devices: bands cover the image once, spread == single device, one device is the plain path.

GPUs are not needed: ``--devices cpu,cpu`` runs the same code (threads, copies, reductions) on CPU replicas.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from hires_nst import images, stageplan
from hires_nst.config import resolve
from hires_nst.events import Message, Planned
from hires_nst.features import VGGFeatures
from hires_nst.objective import Objective, Weights, make_targets
from hires_nst.placement import Placement, place
from hires_nst.render import RenderJob, render
from hires_nst.schedule import Stage
from hires_nst.spread import SpreadObjective, make_spread_objective
from hires_nst.tileplan import Rect, plan_bands, required_halo, spread_pays
from hires_nst.tiling import TiledObjective

CPU = torch.device("cpu")
# Shallow layers keep the halo at 12 px, so that bands of a 96 px image really are apart.
CONTENT_LAYERS, STYLE_LAYERS = ("conv2_1",), ("conv1_1", "conv2_1", "conv3_1")


def coverage(bands, width: int, height: int) -> torch.Tensor:
    counts = torch.zeros(height, width, dtype=torch.int32)
    for band in bands:
        for tile in band.tiles:
            c = tile.core
            counts[c.top:c.bottom, c.left:c.right] += 1
    return counts


# --------------------------------------------------------------------------- the plan


@pytest.mark.parametrize("width,height", [(160, 96), (96, 160), (157, 203), (300, 33), (64, 64)])
@pytest.mark.parametrize("sizes", [[None, None], [32, 64], [None, 48, 32]], ids=["untiled", "two sizes", "three"])
def test_bands_cover_every_pixel_once_with_aligned_cuts_and_full_halos(width: int, height: int, sizes: list) -> None:
    halo, align = 20, 16  # the halo rounds up to 32
    bands = plan_bands(width, height, sizes, halo, align)

    assert bool((coverage(bands, width, height) == 1).all())
    across_width = width >= height
    for band in bands:
        rect = band.rect
        assert (rect.top, rect.bottom) == (0, height) if across_width else (rect.left, rect.right) == (0, width)
        assert rect.left % align == 0 and rect.top % align == 0
        for tile in band.tiles:
            c, w = tile.core, tile.window
            assert rect.left <= c.left and c.right <= rect.right and rect.top <= c.top and c.bottom <= rect.bottom
            assert w == Rect(max(0, c.left - 32), max(0, c.top - 32), min(width, c.right + 32), min(height, c.bottom + 32))


def test_each_band_is_tiled_with_its_own_devices_tile_size() -> None:
    bands = plan_bands(512, 128, [64, None, 128], halo=16)
    assert [b.rect for b in bands] == [Rect(0, 0, 160, 128), Rect(160, 0, 336, 128), Rect(336, 0, 512, 128)]
    assert [t.core.width for t in bands[0].tiles] == [64, 64, 32, 64, 64, 32]  # 2 rows of 64, 64, 32
    assert [t.core for t in bands[1].tiles] == [Rect(160, 0, 336, 128)]
    assert [(t.core.width, t.core.height) for t in bands[2].tiles] == [(128, 128), (48, 128)]
    assert bands[1].tiles[0].window == Rect(144, 0, 352, 128)  # reaches 16 px into both neighbours


def test_an_image_too_small_for_every_device_gets_fewer_bands() -> None:
    assert len(plan_bands(40, 20, [None] * 4, halo=0, align=16)) == 2
    assert len(plan_bands(20, 20, [None] * 4, halo=0, align=16)) == 1


def test_spreading_an_untiled_stage_pays_only_where_the_halo_is_small_against_the_band() -> None:
    # Cost model: untiled 3 units/pixel; spread 4 units per band pixel (two forwards, one backward).
    assert not spread_pays(256, 256, 2, halo=80)  # bands of 208 of 256 rows: 1.08x slower
    assert spread_pays(1024, 1024, 2, halo=80)  # 592 of 1024: 1.30x faster
    assert spread_pays(512, 512, 4, halo=80)
    assert not spread_pays(4096, 4096, 1, halo=80)


# --------------------------------------------------------------------------- the objective


@pytest.fixture(scope="module")
def extractor(random_weights) -> VGGFeatures:
    """Untrained weights: spreading is exact whatever the network computes."""
    return VGGFeatures(random_weights, CONTENT_LAYERS + STYLE_LAYERS)


def setup(extractor: VGGFeatures, width: int = 96, height: int = 64):
    weights = Weights.equal_layers(1.0, 10.0, 0.1, CONTENT_LAYERS, STYLE_LAYERS)
    g = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, height, width, generator=g)
    styles = [torch.rand(1, 3, 48, 40, generator=g), torch.rand(1, 3, 32, 56, generator=g)]
    targets = make_targets(extractor, content, styles, [0.7, 0.3], weights)
    image = (0.5 * content + 0.5 * torch.rand(1, 3, height, width, generator=g)).clamp(0, 1)
    return targets, weights, image


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("sizes", [[None, None], [32, 48], [16, None, 32]], ids=["band each", "own tiles", "three"])
def test_spread_over_cpu_devices_equals_the_single_device_objective(extractor: VGGFeatures, sizes: list) -> None:
    assert required_halo(CONTENT_LAYERS + STYLE_LAYERS) == 12
    targets, weights, image = setup(extractor)
    placement = place(extractor, [CPU] * len(sizes))
    spread = make_spread_objective(placement, targets, weights, plan_bands(96, 64, sizes, 12))
    assert isinstance(spread, SpreadObjective) and len(spread.shards) == len(sizes)
    assert all(s.bounds.width < 96 for s in spread.shards)  # each device reads only its band + halo
    assert spread.shards[1].objective.extractor is not spread.shards[0].objective.extractor  # replicas

    single, spread_image = image.clone(), image.clone()
    expected = Objective(extractor, targets, weights)(single)
    got = spread(spread_image)

    for key in ("total", "content", "style", "tv"):
        assert abs(float(got[key]) - float(expected[key])) <= 1e-5 * abs(float(expected[key])), key
    assert relative(spread_image.grad, single.grad) < 1e-5
    for key, value in spread.loss(image).items():
        assert abs(float(value) - float(expected[key])) <= 1e-5 * abs(float(expected[key])), key


def test_one_device_is_exactly_the_single_device_path(extractor: VGGFeatures) -> None:
    targets, weights, _ = setup(extractor)
    one = Placement.single(extractor)
    assert type(make_spread_objective(one, targets, weights, plan_bands(96, 64, [None], 12))) is Objective
    assert type(make_spread_objective(one, targets, weights, plan_bands(96, 64, [32], 12))) is TiledObjective
    config = resolve(("test", {"tiling": {"tile_size": "32"}}))
    plan = stageplan.tiling_rules(config, one).plan(Stage(0, 96, 64, 1))
    assert plan.bands == () and plan.tiling == stageplan.Tiling(32, 80, 6)


def test_stage_tiling_spreads_tiled_stages_and_large_untiled_ones(monkeypatch: pytest.MonkeyPatch,
                                                                   extractor: VGGFeatures) -> None:
    two = Placement((extractor, extractor), (CPU, CPU))
    monkeypatch.setattr(stageplan, "available_bytes", lambda device: 10**12)

    def tiling(config, stage: Stage) -> stageplan.Tiling:
        return stageplan.tiling_rules(config, two).plan(stage).tiling

    auto = resolve(("test", {}))
    assert tiling(auto, Stage(0, 256, 192, 1)).device_tiles == ()
    big = tiling(auto, Stage(0, 1024, 768, 1))
    assert (big.tile, big.tiles, big.device_tiles) == (None, 2, (None, None))
    forced = tiling(resolve(("test", {"tiling": {"tile_size": "128"}})), Stage(0, 256, 192, 1))
    assert (forced.tile, forced.tiles, forced.device_tiles) == (128, 4, (128, 128))
    off = resolve(("test", {"tiling": {"tile_size": "off"}}))
    assert tiling(off, Stage(0, 1024, 768, 1)) == stageplan.Tiling(None, 80, 1)


# --------------------------------------------------------------------------- renders


def _job(tmp_path: Path, name: str, **device) -> RenderJob:
    rng = np.random.default_rng(0)
    for image in ("c.png", "s.png"):
        if not (tmp_path / image).exists():
            images.save_image(tmp_path / image, rng.random((64, 96, 3)).astype(np.float32))
    config = resolve(("test", {"pyramid": {"min_size": 96, "max_size": 96, "iterations": [3]},
                               "loss": {"content_layers": list(CONTENT_LAYERS), "style_layers": list(STYLE_LAYERS)},
                               "tiling": {"tile_size": "32"}, "device": {"precision": "fp32", **device},
                               "output": {"work_dir": str(tmp_path / f"work-{name}")}}))
    return RenderJob(tmp_path / "c.png", (tmp_path / "s.png",), tmp_path / f"{name}.png", config)


@pytest.mark.slow
def test_a_render_on_two_cpu_devices_equals_the_single_device_render(tmp_path: Path) -> None:
    events: list = []
    one = render(_job(tmp_path, "one", device="cpu"))
    two = render(_job(tmp_path, "two", devices="cpu,cpu"), events.append)

    (plan,) = [e for e in events if isinstance(e, Planned)]
    assert plan.device == "cpu, cpu (fp32, channels-last)" and plan.stages[0].tiles == 8  # per band: 32 + 16 px cores, 2 rows
    for key in ("total", "content", "style"):
        assert two.losses[key] == pytest.approx(one.losses[key], rel=1e-4), key
    a, b = (images.load_image(r.output) for r in (one, two))
    assert float(np.abs(a - b).mean()) < 0.5 / 255
    settings = json.loads(two.settings.read_text())
    assert (settings["devices"], settings["precision"]) == (["cpu", "cpu"], "fp32, channels-last")


@pytest.mark.slow
def test_out_of_memory_on_a_second_device_retries_the_stage_with_half_the_tile(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real = TiledObjective._backward_tile
    failed: list[str] = []

    def out_of_memory_once_off_the_main_thread(self, *args, **kwargs):
        if not failed and threading.current_thread() is not threading.main_thread():
            failed.append(threading.current_thread().name)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(TiledObjective, "_backward_tile", out_of_memory_once_off_the_main_thread)
    monkeypatch.setattr(stageplan, "MIN_TILE", 16)
    events: list = []
    render(_job(tmp_path, "oom", devices="cpu,cpu"), events.append)

    assert failed and failed[0].startswith("hires-nst-device")
    retries = [e.text for e in events if isinstance(e, Message) and "out of memory" in e.text]
    assert retries == ["out of memory at stage 1 (32 px tiles); retrying it with 16 px tiles"]
    assert (tmp_path / "oom.png").is_file()
