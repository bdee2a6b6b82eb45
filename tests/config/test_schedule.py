"""The pyramid schedule: sizes, aspect ratios, iterations, bad input."""

from __future__ import annotations

import pytest

from hires_nst.config.schedule import make_schedule, stage_long_sides
from hires_nst.errors import ConfigError


def sizes(schedule):
    return [(s.width, s.height) for s in schedule]


def test_doubles_from_min_size_and_lands_exactly_on_max_size() -> None:
    schedule = make_schedule(1024, 768, max_size=3000)
    assert sizes(schedule) == [(128, 96), (256, 192), (512, 384), (1024, 768), (2048, 1536), (3000, 2250)]
    assert [s.iterations for s in schedule] == [300, 150, 80, 50, 50, 50]


def test_keeps_the_aspect_ratio_of_a_portrait_image_at_every_stage() -> None:
    schedule = make_schedule(1200, 1528, max_size=1528, min_size=191)
    for stage in schedule:
        assert stage.height == max(stage.width, stage.height)
        assert stage.width / stage.height == pytest.approx(1200 / 1528, abs=1 / stage.height)
    assert sizes(schedule)[-1] == (1200, 1528)


def test_three_stages_from_96_to_384() -> None:
    assert sizes(make_schedule(1024, 768, max_size=384, min_size=96)) == [(96, 72), (192, 144), (384, 288)]


def test_a_stage_barely_smaller_than_the_last_is_dropped() -> None:
    assert stage_long_sides(256, 1040, 2.0) == [256, 512, 1040]
    assert stage_long_sides(256, 1500, 2.0) == [256, 512, 1024, 1500]


def test_min_equal_to_max_is_a_single_stage() -> None:
    schedule = make_schedule(640, 480, max_size=512, min_size=512)
    assert sizes(schedule) == [(512, 384)]
    assert schedule[0].iterations == 500


def test_default_min_size_shrinks_to_a_small_max_size() -> None:
    assert sizes(make_schedule(1024, 768, max_size=128)) == [(128, 96)]
    assert sizes(make_schedule(1024, 768, max_size=100)) == [(100, 75)]


def test_other_scale_factors() -> None:
    assert stage_long_sides(128, 512, 2**0.5) == [128, 181, 256, 362, 512]
    assert stage_long_sides(100, 1000, 3.0) == [100, 300, 1000]


def test_iterations_one_number_or_one_per_stage() -> None:
    assert [s.iterations for s in make_schedule(800, 600, max_size=1024, min_size=256, iterations=[30])] == [30, 30, 30]
    schedule = make_schedule(800, 600, max_size=1024, min_size=256, iterations=[500, 200, 100])
    assert [s.iterations for s in schedule] == [500, 200, 100]


def test_iteration_list_of_the_wrong_length_is_an_error() -> None:
    with pytest.raises(ConfigError, match="3 stages.*--fit-iterations"):
        make_schedule(800, 600, max_size=1024, min_size=256, iterations=[500, 200])


def test_a_fitted_list_repeats_its_last_value_or_keeps_its_first_ones() -> None:
    def counts(max_size: int) -> list[int]:
        return [s.iterations for s in make_schedule(800, 600, max_size=max_size, min_size=256, iterations=[100, 40],
                                                     fit_iterations=True)]

    assert counts(512) == [100, 40]
    assert counts(2048) == [100, 40, 40, 40]
    assert counts(256) == [100]


def test_min_above_max_is_an_error() -> None:
    with pytest.raises(ConfigError, match="--min-size 600 is larger than --max-size 500"):
        make_schedule(800, 600, max_size=500, min_size=600)


@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_factor_at_most_one_is_an_error(factor: float) -> None:
    with pytest.raises(ConfigError, match="--scale-factor"):
        make_schedule(800, 600, max_size=1024, factor=factor)
