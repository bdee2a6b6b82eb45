"""Tiling inside renders: automatic tile size, out-of-memory retries, the plan shown to the user."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hires_nst.config.schedule import Stage
from hires_nst.config.settings import resolve
from hires_nst.engine import plan as stageplan
from hires_nst.engine import pyramid
from hires_nst.engine.render import RenderJob, render
from hires_nst.errors import DeviceError
from hires_nst.events import Message, Planned
from hires_nst.io import images
from hires_nst.runtime.placement import Placement, auto_tile_size, estimate_stage_bytes


def test_auto_tile_is_untiled_when_the_image_fits() -> None:
    assert auto_tile_size(1024, 768, 80, budget=10 * 2**30) is None


def test_auto_tile_is_the_largest_aligned_tile_that_fits() -> None:
    budget = estimate_stage_bytes(4096, 4096, 1024, 80)
    tile = auto_tile_size(4096, 4096, 80, budget)
    assert tile is not None and tile % 16 == 0 and 768 <= tile <= 1024
    assert estimate_stage_bytes(4096, 4096, tile, 80) <= budget


def test_auto_tile_shrinks_with_the_budget() -> None:
    tiles = [auto_tile_size(4096, 3072, 80, budget=gb * 2**30) for gb in (16, 8, 4, 2)]
    assert all(t is not None for t in tiles) and tiles == sorted(tiles, reverse=True)


def _tiling(config, stage: Stage) -> stageplan.Tiling:
    return stageplan.tiling_rules(config, Placement.single(torch.nn.Identity())).plan(stage).tiling


def test_stage_tiling_auto_measures_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    config = resolve(("test", {}))
    stage = Stage(0, 1024, 768, 1)
    monkeypatch.setattr(stageplan, "available_bytes", lambda device: 10**12)
    assert _tiling(config, stage).tile is None
    monkeypatch.setattr(stageplan, "available_bytes", lambda device: 600 * 2**20)
    tiling = _tiling(config, stage)
    assert tiling.tile is not None and tiling.tiles > 1


def test_auto_tiling_is_measured_again_when_the_stage_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = Stage(0, 1024, 768, 1)
    monkeypatch.setattr(stageplan, "available_bytes", lambda device: 10**12)
    plan = stageplan.make_plan(resolve(("test", {})), [stage], None, Placement.single(torch.nn.Identity()))
    assert plan.stages[0].tiling.tile is None
    monkeypatch.setattr(stageplan, "available_bytes", lambda device: 600 * 2**20)
    assert plan.at_start(0).tiling.tile is not None  # less free memory at the stage's start: tiled
    fixed = stageplan.make_plan(resolve(("test", {"tiling": {"tile_size": "off"}})), [stage], None,
                                Placement.single(torch.nn.Identity()))
    assert fixed.at_start(0) is fixed.stages[0]


def test_forced_tile_larger_than_the_stage_runs_untiled() -> None:
    config = resolve(("test", {"tiling": {"tile_size": "512"}}))
    assert _tiling(config, Stage(0, 256, 192, 1)) == stageplan.Tiling(None, 80, 1)


def _tiny_job(tmp_path: Path, **tiling) -> RenderJob:
    rng = np.random.default_rng(0)
    for name in ("c.png", "s.png"):
        images.save_image(tmp_path / name, rng.random((96, 128, 3)).astype(np.float32))
    config = resolve(("test", {"pyramid": {"min_size": 128, "max_size": 128, "iterations": [2]},
                               "loss": {"content_layers": ["conv2_1"], "style_layers": ["conv1_1", "conv2_1"]},
                               "tiling": tiling, "output": {"work_dir": str(tmp_path / "work")}}))
    return RenderJob(tmp_path / "c.png", (tmp_path / "s.png",), tmp_path / "out.png", config)


def test_out_of_memory_retries_the_stage_with_half_the_tile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = pyramid.make_objective

    def fails_above_32_px(extractor, targets, weights, tiles, precision):
        objective = real(extractor, targets, weights, tiles, precision)
        if max(t.core.width for t in tiles) > 32:
            def out_of_memory(image):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return out_of_memory
        return objective

    monkeypatch.setattr(pyramid, "make_objective", fails_above_32_px)
    monkeypatch.setattr(stageplan, "MIN_AUTO_TILE", 16)
    events = []
    render(_tiny_job(tmp_path, tile_size="off"), events.append)
    retries = [e.text for e in events if isinstance(e, Message) and "out of memory" in e.text]
    assert retries == ["out of memory at stage 1 (untiled); retrying it with 64 px tiles",
                       "out of memory at stage 1 (64 px tiles); retrying it with 32 px tiles"]
    assert (tmp_path / "out.png").is_file()


def test_out_of_memory_below_the_smallest_tile_is_a_clear_error(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def always_out_of_memory(*args, **options):
        def objective(image):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 GB")
        return objective

    monkeypatch.setattr(pyramid, "make_objective", always_out_of_memory)
    with pytest.raises(DeviceError, match="out of memory at stage 1 .* even with 64 px tiles"):
        render(_tiny_job(tmp_path, tile_size="off"))


def test_the_plan_says_which_stages_are_tiled(tmp_path: Path) -> None:
    events = []
    render(_tiny_job(tmp_path, tile_size="64"), events.append)
    (plan,) = [e for e in events if isinstance(e, Planned)]
    assert [(s.tile, s.tiles) for s in plan.stages] == [(64, 4)]
