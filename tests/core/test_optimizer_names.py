"""The optimisers' names live in one place (``catalog.OPTIMIZERS``): the config takes those, the
engine builds each of them, the memory model sizes each of them; layer aliases are resolved by
``catalog.alias`` alone."""

from __future__ import annotations

import pytest
import torch

from hires_nst.config import catalog, settings
from hires_nst.config.catalog import LBFGS_OPTIMIZERS, OPTIMIZERS, alias
from hires_nst.core import memmodel
from hires_nst.engine.optimize import make_optimizer
from hires_nst.errors import ConfigError


def test_the_config_takes_the_catalogs_names() -> None:
    assert settings.OPTIMIZERS is catalog.OPTIMIZERS
    for name in OPTIMIZERS:
        assert settings.resolve(("test", {"optim": {"optimizer": name}})).optim.optimizer == name
    with pytest.raises(ConfigError, match=r"--optimizer \(optim.optimizer\) must be one of " + ", ".join(OPTIMIZERS)):
        settings.resolve(("test", {"optim": {"optimizer": "newton"}}))


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_the_engine_builds_every_named_optimizer(name: str) -> None:
    assert isinstance(make_optimizer(name, torch.zeros(1, 3, 4, 4, requires_grad=True), 0.1), torch.optim.Optimizer)


def test_the_memory_model_sizes_every_named_optimizer() -> None:
    assert set(memmodel.OPTIMIZER_BYTES) == set(OPTIMIZERS) and set(LBFGS_OPTIMIZERS) <= set(OPTIMIZERS)
    pairs = memmodel.PAIR_BYTES * memmodel.lbfgs_history(64 * 64)
    for name in OPTIMIZERS:
        history = pairs if name in LBFGS_OPTIMIZERS else 0
        assert memmodel.state_bytes_per_pixel(name, 64 * 64) == memmodel.OPTIMIZER_BYTES[name] + history


@pytest.mark.parametrize("layers,expected", [(["relu1_1", "conv4_2", "relu5_1"], "default"),
                                             (["conv1_1", "conv5_1"], "default"), (["relu3_4"], "all"),
                                             (["layer4"], "all"), (["conv1_2"], "all")])
def test_the_memory_models_layer_set_reads_aliases_as_the_catalog_does(layers: list[str], expected: str) -> None:
    assert memmodel.layer_set(layers) == expected
    assert memmodel.layer_set([alias(n) for n in layers]) == expected
