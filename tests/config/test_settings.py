"""Settings: every number checked once, in ``config.validate``, before anything loads or is written."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from typer.testing import CliRunner

import hires_nst.engine.render
from hires_nst.cli.main import app
from hires_nst.config.settings import SECTIONS, flag_of, named_layer, resolve
from hires_nst.errors import EXIT_USAGE, ConfigError, classify
from tests.helpers.synthetic import write_image

NUMBER_KINDS = (int, float)


def _numeric_fields() -> list[tuple[str, str, Any]]:
    """(section, key, number type) of every int/float field and tuple of them, in every config dataclass:
    found here, so that a field added later is covered without touching this test."""
    found = []
    for section, cls in SECTIONS.items():
        hints = get_type_hints(cls)
        for field in dataclasses.fields(cls):
            kind = hints[field.name]
            item = getattr(kind, "__args__", (None,))[0]
            if kind in NUMBER_KINDS or (getattr(kind, "__origin__", None) is tuple and item in NUMBER_KINDS):
                found.append((section, field.name, kind))
    return found


HOSTILE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "zero": 0, "negative": -1, "negative-half": -0.5,
           "huge": 1e300, "huge-int": 10**30}


@pytest.mark.parametrize("value", HOSTILE.values(), ids=HOSTILE.keys())
@pytest.mark.parametrize("section,key,kind", _numeric_fields(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_number_is_accepted_or_refused_naming_its_flag(section: str, key: str, kind: Any, value: Any) -> None:
    given = [value] if getattr(kind, "__origin__", None) is tuple else value
    try:
        config = resolve(("test", {section: {key: given}}))
    except ConfigError as exc:
        assert flag_of(section, key) in str(exc), str(exc)
        return
    accepted = getattr(getattr(config, section), key)
    numbers = accepted if isinstance(accepted, tuple) else (accepted,)
    assert all(math.isfinite(n) for n in numbers), f"{section}.{key} accepted {value!r}"


def test_the_number_fields_are_found() -> None:
    keys = {key for _, key, _ in _numeric_fields()}
    assert {"style_weight", "lr", "seed", "scale_factor", "style_blend", "iterations", "dpi"} <= keys


# flag value -> what the one line says
REFUSED = {
    ("--style-weight", "nan"): "--style-weight", ("--style-weight", "inf"): "--style-weight",
    ("--content-weight", "nan"): "--content-weight", ("--content-weight", "inf"): "--content-weight",
    ("--tv-weight", "nan"): "--tv-weight", ("--tv-weight", "inf"): "--tv-weight",
    ("--style-blend", "nan"): "--style-blend", ("--style-blend", "inf"): "--style-blend",
    ("--lr", "nan"): "--lr", ("--lr", "inf"): "--lr",
    ("--scale-factor", "nan"): "--scale-factor", ("--scale-factor", "inf"): "--scale-factor",
    ("--style-scale", "nan"): "--style-scale", ("--style-scale", "inf"): "--style-scale",
    ("--style-scale", "1e300"): "--style-scale", ("--save-minutes", "inf"): "--save-minutes",
    ("--seed", "99999999999999999999999"): "--seed", ("--seed", "-99999999999999999999999"): "--seed",
    ("--average-iterates", "nan"): "--average-iterates",
}


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in").mkdir()
    return write_image(tmp_path / "in" / "c.png"), write_image(tmp_path / "in" / "s.png", seed=1)


@pytest.mark.parametrize("flag,value", REFUSED, ids=[f"{f}={v}" for f, v in REFUSED])
def test_a_bad_number_is_one_line_exit_2_before_any_model_load(flag: str, value: str, inputs: tuple[Path, Path],
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_model(*args: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(hires_nst.engine.render, "build_extractor", no_model)
    before = set(tmp_path.rglob("*"))

    result = CliRunner().invoke(app, ["render", str(inputs[0]), str(inputs[1]), "-o", str(tmp_path / "o.png"),
                                      f"{flag}={value}", "-q"])

    assert result.exit_code == 2, result.output
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and REFUSED[flag, value] in line
    assert set(tmp_path.rglob("*")) == before


def test_torch_seed_range_is_accepted_at_both_ends() -> None:
    assert resolve(("t", {"optim": {"seed": 2**64 - 1}})).optim.seed == 2**64 - 1
    assert resolve(("t", {"optim": {"seed": -(2**63)}})).optim.seed == -(2**63)
    with pytest.raises(ConfigError, match="--seed"):
        resolve(("t", {"optim": {"seed": 2**64}}))


def test_a_config_mistake_is_a_usage_error() -> None:
    assert classify(ConfigError("--lr must be finite")).exit_code == EXIT_USAGE == 2


def test_a_misspelt_name_is_answered_with_the_name_meant() -> None:
    with pytest.raises(ConfigError, match=r"unknown section \[lossy\]; did you mean loss\? known: loss, optim"):
        resolve(("t", {"lossy": {}}))
    with pytest.raises(ConfigError, match=r"^t: unknown setting 'stlye_weight'; did you mean style_weight\?$"):
        resolve(("t", named_layer({"stlye_weight": 2}, "t")))
