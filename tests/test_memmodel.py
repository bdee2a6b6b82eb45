"""The memory model against fake-tensor measurements of the real stage (memmeasure): never under,
at most a quarter over; and the default plans of the goal sizes fit the goal cards."""

from __future__ import annotations

import functools
import warnings

import pytest

from hires_nst.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
from hires_nst.memmeasure import Scenario, measure
from hires_nst.memmodel import estimate, lbfgs_history, plan_tile
from hires_nst.tileplan import align_for, required_halo, round_up

GiB = 2**30
LAYERS = (*DEFAULT_CONTENT_LAYERS, *DEFAULT_STYLE_LAYERS)
HALO, ALIGN = required_halo(LAYERS), align_for(LAYERS)
SIZES = [(2048, 2048), (4096, 3072), (4096, 4096), (8192, 8192)]

pytestmark = pytest.mark.filterwarnings("ignore")


@functools.lru_cache(maxsize=None)  # the 24 GB plans are measured by the first test already
def _measure(width: int, height: int, tile: int | None, precision: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return measure(Scenario(width, height, tile, precision)).peak


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
@pytest.mark.parametrize("width, height", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
def test_the_estimate_covers_the_measured_peak_and_at_most_a_quarter_more(width: int, height: int, tiled: bool,
                                                                          precision: str) -> None:
    tile = round_up(-(-max(width, height) // 2), ALIGN) if tiled else None  # 2x2 windows: a short measurement
    measured = _measure(width, height, tile, precision)
    estimated = estimate(width, height, tile, HALO, ALIGN, precision=precision, optimizer="lbfgs", layers=LAYERS)
    assert measured <= estimated <= 1.25 * measured, (measured / GiB, estimated / GiB)


@pytest.mark.parametrize("side", [4096, 8192])
def test_the_default_plan_fits_a_24_gb_card_by_measurement(side: int) -> None:
    budget = 23 * GiB
    tile = plan_tile(side, side, HALO, budget, ALIGN, precision="bf16", optimizer="lbfgs", layers=LAYERS)
    assert (tile is None) == (side == 4096)  # 4096 px fits untiled (~15.4 GiB), 8192 px is tiled
    assert _measure(side, side, tile, "bf16") <= budget


def test_the_goal_sizes_on_an_80_gb_card() -> None:
    budget = 80 * 10**9
    for width, height in [(4096, 3072), (4096, 4096), (8192, 8192)]:  # all three fit untiled (~12, 15, 55 GiB)
        assert plan_tile(width, height, HALO, budget, ALIGN, precision="bf16", layers=LAYERS) is None
    assert _measure(8192, 8192, None, "bf16") <= budget


def test_lbfgs_history_keeps_to_its_2_gib_cap_at_print_sizes() -> None:
    for side in (4096, 8192, 12288):
        pairs = lbfgs_history(side * side)
        assert pairs >= 1 and (pairs == 1 or pairs * 2 * 12 * side * side <= 2 * GiB)
    assert lbfgs_history(8192 * 8192) * 2 * 12 * 8192 * 8192 <= 2 * GiB
    assert lbfgs_history(256 * 256) == 100


def test_plan_tile_takes_the_fewest_balanced_tiles_that_fit() -> None:
    kwargs = {"precision": "bf16", "layers": LAYERS}
    untiled = estimate(8192, 8192, None, HALO, ALIGN, **kwargs)
    for budget in (untiled // 2, untiled // 3, untiled // 4):  # the whole-image buffers alone are ~1/6
        tile = plan_tile(8192, 8192, HALO, budget, ALIGN, **kwargs)
        assert tile is not None and estimate(8192, 8192, tile, HALO, ALIGN, **kwargs) <= budget
        per_side = -(-8192 // tile)
        if per_side > 2:  # one tile fewer per side would not fit
            wider = round_up(-(-8192 // (per_side - 1)), ALIGN)
            assert estimate(8192, 8192, wider, HALO, ALIGN, **kwargs) > budget
