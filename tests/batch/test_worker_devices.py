"""A parallel batch reads each worker's device once (``config.devices``) and shares the host's cores
out with the ranks' own formula (``ranks.cpu_threads``)."""

from __future__ import annotations

import pytest
import torch

from hires_nst.batch import parallel
from hires_nst.config.devices import DeviceName
from hires_nst.errors import ConfigError
from hires_nst.runtime import ranks


def test_the_threads_per_cpu_worker_are_the_ranks_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parallel.cpu_threads is ranks.cpu_threads
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert ranks.cpu_threads([torch.device("cpu")] * 2) == 4
    assert ranks.cpu_threads([torch.device("cpu")] * 3) == 2
    assert ranks.cpu_threads([torch.device("cuda", 0)]) == 8  # no CPU worker: all cores (unused)


def test_each_entry_is_read_once_and_handed_to_its_worker_as_a_name(monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    real = parallel.device_name
    monkeypatch.setattr(parallel, "device_name", lambda text, flag: read.append(text) or real(text, flag))
    monkeypatch.setattr("hires_nst.runtime.placement.usable_cores", lambda: 4)
    assert parallel.run_parallel([], None, print, ["cpu", "cpu"]) == ({}, "")  # type: ignore[arg-type]
    assert read == ["cpu", "cpu"]
    assert parallel.pin_device(DeviceName("cpu"), {}) == "cpu"


def test_an_unknown_worker_device_fails_the_batch_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="^--devices: unknown device 'gpu0'"):
        parallel.run_parallel([], None, print, ["cpu", "gpu0"])  # type: ignore[arg-type]
