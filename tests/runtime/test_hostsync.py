"""The host-sync counter: reads that make the host wait, including those CUDA kernels hide in ATen."""

from __future__ import annotations

import pytest
import torch

from hires_nst.core import losses
from hires_nst.runtime.hostsync import HostCounter


def spd(channels: int = 8) -> torch.Tensor:
    a = torch.randn(channels, channels, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return a @ a.T + torch.eye(channels, dtype=torch.float64)


CHECKED = {  # each ends, on CUDA, with ATen's error check: infos.any().item()
    "eigh": lambda a, b: torch.linalg.eigh(a),
    "eigvalsh": lambda a, b: torch.linalg.eigvalsh(a),
    "cholesky": lambda a, b: torch.linalg.cholesky(a),
    "solve": lambda a, b: torch.linalg.solve(a, b),
    "inv": lambda a, b: torch.linalg.inv(a),
    "svd": lambda a, b: torch.linalg.svd(a),
    "lu_factor": lambda a, b: torch.linalg.lu_factor(a),
    "cholesky_ex, checked": lambda a, b: torch.linalg.cholesky_ex(a, check_errors=True),
    "boolean mask": lambda a, b: a[a > 0],  # nonzero inside: the host reads the count
}
UNCHECKED = {  # no error code read back, or not unless asked
    "cholesky_ex": lambda a, b: torch.linalg.cholesky_ex(a),
    "inv_ex": lambda a, b: torch.linalg.inv_ex(a),
    "solve_ex": lambda a, b: torch.linalg.solve_ex(a, b),
    "solve_triangular": lambda a, b: torch.linalg.solve_triangular(torch.linalg.cholesky_ex(a)[0], b, upper=False),
    "matmul": lambda a, b: a @ b,
    "newton_schulz": lambda a, b: losses.newton_schulz(a),
}


@pytest.mark.parametrize("name", CHECKED)
def test_linalg_ops_with_a_hidden_error_check_count_one_sync_on_cuda(name: str) -> None:
    a, b = spd(), torch.ones(8, 2, dtype=torch.float64)
    with HostCounter(simulate_cuda=True) as on_cuda:
        CHECKED[name](a, b)
    with HostCounter() as on_cpu:  # the check reads host memory on a CPU: no wait
        CHECKED[name](a, b)
    assert (on_cuda.syncs, on_cpu.syncs) == (1, 0), on_cuda.by_name


@pytest.mark.parametrize("name", UNCHECKED)
def test_ops_without_an_error_check_count_no_sync(name: str) -> None:
    a, b = spd(), torch.ones(8, 2, dtype=torch.float64)
    with HostCounter(simulate_cuda=True) as counter:
        UNCHECKED[name](a, b)
    assert counter.syncs == 0, counter.by_name


def test_reads_count_as_before() -> None:
    x = torch.ones(3)
    with HostCounter() as counter:
        float(x.sum())
        x.tolist()
        bool(x[0] > 0)
    assert counter.syncs == 3
