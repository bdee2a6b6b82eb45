"""A stage's plan lays out its windows once: the plan's tiles, its memory estimate and its tile
count come from one ``plan_tiles`` call."""

from __future__ import annotations

import pytest
import torch

from hires_nst.config.schedule import Stage
from hires_nst.config.settings import resolve
from hires_nst.core import memmodel, tiles
from hires_nst.engine import plan
from hires_nst.runtime.placement import Placement, estimate_stage_bytes


@pytest.mark.parametrize("tile_size,count", [("64", 12), ("512", 1), ("off", 1)])
def test_one_layout_per_stage_plan(monkeypatch: pytest.MonkeyPatch, tile_size: str, count: int) -> None:
    layouts: list[tuple[int, int, int]] = []
    real = tiles.plan_tiles

    def counted(width: int, height: int, tile: int, halo: int, align: int = 16) -> list[tiles.Tile]:
        layouts.append((width, height, tile))
        return real(width, height, tile, halo, align)

    monkeypatch.setattr(tiles, "plan_tiles", counted)
    monkeypatch.setattr(memmodel, "plan_tiles", counted)
    config = resolve(("test", {"tiling": {"tile_size": tile_size}}))
    made = plan.make_plan(config, [Stage(0, 256, 192, 1)], None, Placement.single(torch.nn.Identity()))

    stage = made.stages[0]
    assert len(layouts) == (0 if tile_size == "off" else 1)
    assert len(stage.tiles) == stage.tiling.tiles == count
    assert (stage.tiling.tile is None) == (count == 1) and (stage.grid.tile is None) == (count == 1)
    layouts.clear()  # the estimate from the plan's windows is the one from a fresh layout
    assert stage.memory == estimate_stage_bytes(256, 192, stage.tiling.tile, stage.halo, stage.grid.align,
                                                layers=(*config.loss.content_layers, *config.loss.style_layers),
                                                style_loss="gram")
