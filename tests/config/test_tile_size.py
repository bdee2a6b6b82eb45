"""--tile-size is read once, into a value object, when the config is resolved; the engine reads that
object and never the text. The typed minimum and the render's own minimum are two named constants."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hires_nst.config import settings
from hires_nst.config.schedule import Stage
from hires_nst.config.settings import MIN_TYPED_TILE, TileSize, resolve
from hires_nst.core.memmodel import MIN_AUTO_TILE
from hires_nst.engine import plan
from hires_nst.errors import ConfigError, DeviceError
from hires_nst.runtime.placement import Placement


@pytest.mark.parametrize("text,size", [("auto", TileSize(auto=True)), ("off", TileSize()), ("64", TileSize(64)),
                                       (str(MIN_TYPED_TILE), TileSize(MIN_TYPED_TILE))])
def test_resolve_gives_the_tile_size_as_a_value(text: str, size: TileSize) -> None:
    assert resolve(("test", {"tiling": {"tile_size": text}})).tiling.size == size


@pytest.mark.parametrize("text", ["15", "0", "-64", "64px", "Auto", ""])
def test_a_bad_tile_size_is_a_config_error_naming_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--tile-size \(tiling.tile_size\) must be auto, off or a whole number "
                                          r"of pixels >= 16"):
        resolve(("test", {"tiling": {"tile_size": text}}))


def test_the_text_is_parsed_once_and_never_by_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = settings.parse_tile_size
    monkeypatch.setattr(settings, "parse_tile_size", lambda text: calls.append(text) or real(text))
    config = resolve(("test", {"tiling": {"tile_size": "64"}}))
    assert calls == ["64"]
    assert config.tiling.size is config.tiling.size
    plan.make_plan(config, [Stage(0, 256, 192, 1), Stage(1, 512, 384, 1)], None, Placement.single(torch.nn.Identity()))
    assert calls == ["64"]


def test_the_parsed_value_stays_out_of_the_saved_settings() -> None:
    config = resolve(("test", {"tiling": {"tile_size": "64"}}))
    assert config.tiling.size == TileSize(64)
    assert config.to_dict()["tiling"] == {"tile_size": "64", "halo": 0}  # settings.json and the fingerprint


def test_a_typed_tile_may_be_smaller_than_any_the_render_picks() -> None:
    assert MIN_TYPED_TILE == 16 and MIN_AUTO_TILE == 64
    stage = Stage(0, 256, 192, 1)
    typed = plan.make_plan(resolve(("test", {"tiling": {"tile_size": "16"}})), [stage], None,
                           Placement.single(torch.nn.Identity()))
    assert typed.stages[0].tiling.tile == 16
    at_minimum = dataclasses.replace(typed.stages[0], tiling=plan.Tiling(MIN_AUTO_TILE, 80, 12))
    with pytest.raises(DeviceError, match="even with 64 px tiles"):  # no retry below the render's minimum
        typed.smaller(at_minimum)
