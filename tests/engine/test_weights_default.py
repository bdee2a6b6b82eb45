"""The engine's loss weights state no default of their own: a style loss not given is the config's."""

from __future__ import annotations

import dataclasses

import pytest

from hires_nst.config.settings import LossConfig, resolve
from hires_nst.engine.objective import Weights
from hires_nst.engine.plan import loss_weights


def _weights(**kwargs: str) -> Weights:
    return Weights.equal_layers(1.0, 10.0, 0.0, ["conv4_2"], ["conv1_1", "conv2_1"], **kwargs)


@pytest.mark.default_loss
def test_the_shipped_default_is_the_configs() -> None:
    shipped = {f.name: f.default for f in dataclasses.fields(LossConfig)}["style_loss"]
    assert shipped == "w2"
    assert Weights(1.0, 10.0, 0.0, {}, {"conv1_1": 1.0}).style_loss == shipped == _weights().style_loss
    assert loss_weights(resolve()).style_loss == shipped


def test_the_tests_switch_to_the_papers_loss_reaches_the_engine_too() -> None:
    assert LossConfig().style_loss == "gram"  # tests/conftest.py, for speed
    assert _weights().style_loss == "gram"


@pytest.mark.default_loss
def test_a_named_loss_wins_and_each_stage_takes_its_own() -> None:
    assert _weights(style_loss="gram").style_loss == "gram"
    config = resolve(("test", {"loss": {"style_loss": "gram/w2", "style_layer_weights": "equal"}}))
    assert [loss_weights(config, stage).style_loss for stage in range(3)] == ["gram", "w2", "w2"]
