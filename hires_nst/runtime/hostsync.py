"""Counting what the host does per iteration: tensor ops it launches, and reads that make it wait.

A GPU stays busy only while the host runs ahead of it. Two things stop that: reads of device
values (``.item()``, ``bool(t)``, ``float(t)``, ``tolist()``, a tensor passed where a number is
wanted, as torch's L-BFGS does with ``alpha=``), each a full wait for the device; and ops so many
and so small that launching them takes longer than running them. ``HostCounter`` counts both on
any device, a CPU included, so a test can hold the optimiser loop to them without a GPU.

Some reads happen inside ATen, below the dispatcher, where no mode sees them: the CUDA kernels of
``torch.linalg.eigh``, ``svd``, ``eig``, ``lstsq`` end with ``_linalg_check_errors``, whose
``infos.any().item()`` waits for the device; so do the ``*_ex`` factorisations when asked to
check (``check_errors=True``); and ops whose output size depends on the data (``nonzero``, a
boolean mask index) read the size back. These count as one sync each when their tensors are on
CUDA, or everywhere with ``simulate_cuda`` (the CUDA code path, tested on a CPU). The plain
``cholesky``, ``solve``, ``inv``, ``lu_factor`` call ``_linalg_check_errors`` as an op of its own,
which the dispatcher does see. ``torch.linalg.solve_triangular`` (``lbfgs.py``) has no error code
and no check (ATen's ``linalg_solve_triangular_out`` calls ``triangular_solve_stub``, a BLAS
``trsm``, and nothing after it): no sync.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that copy a device value to the host: the dispatcher sees these.
SYNC_OPS = ("aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.equal.default")
# Reads the dispatcher never sees on a CPU tensor (they copy in C++): caught at the Python level.
SYNC_METHODS = (torch.Tensor.tolist, torch.Tensor.numpy)
# Ops whose CUDA kernels read the device back inside ATen (module docstring): one sync each on CUDA.
HIDDEN_SYNC_OPS = (
    "aten._linalg_eigh.default",  # eigh, eigvalsh: infos.any().item()
    "aten._linalg_svd.default",  # svd, svdvals, matrix_rank, pinv
    "aten.linalg_eig.default",  # also isfinite().all().item() and a copy of the input to the CPU
    "aten.linalg_lstsq.default",
    "aten._linalg_check_errors.default",  # the check as an op: cholesky, solve, inv, lu_factor, ldl_factor
    "aten.nonzero.default", "aten.masked_select.default", "aten._unique2.default",  # data-sized outputs
    "aten.unique_dim.default", "aten.unique_consecutive.default", "aten.repeat_interleave.Tensor",
)
# The *_ex factorisations check (and read back) only when asked: check_errors=True.
CHECKED_WHEN_ASKED = ("aten.linalg_cholesky_ex.default", "aten.linalg_inv_ex.default", "aten._linalg_solve_ex.default",
                      "aten.linalg_lu_factor_ex.default", "aten.linalg_ldl_factor_ex.default")


class _Functions(TorchFunctionMode):
    def __init__(self, counter: HostCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SYNC_METHODS:
            self.counter.syncs += 1
            self.counter.by_name[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


class HostCounter(TorchDispatchMode):
    """``ops``: aten ops dispatched (roughly, kernels launched); ``syncs``: host reads of device
    values, including a copy to the CPU of a tensor that lives elsewhere and the reads hidden in
    CUDA kernels (``HIDDEN_SYNC_OPS``, ``CHECKED_WHEN_ASKED``).

    ``simulate_cuda``: count those hidden reads whatever the device, as CUDA would make them:
    a CPU test of the code path that runs on a GPU.
    """

    def __init__(self, simulate_cuda: bool = False) -> None:
        super().__init__()
        self.simulate_cuda = simulate_cuda
        self.ops = self.syncs = 0
        self.by_name: Counter[str] = Counter()
        self._functions = _Functions(self)

    def __enter__(self) -> HostCounter:
        self._functions.__enter__()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self._functions.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        name = str(func)
        to_host = (name == "aten._to_copy.default" and str(kwargs.get("device", "")) == "cpu"
                   and any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args))
        if name in SYNC_OPS or to_host or self._hidden_sync(name, args, kwargs):
            self.syncs += 1
            self.by_name[name] += 1
        return func(*args, **kwargs)

    def _hidden_sync(self, name: str, args: tuple, kwargs: dict) -> bool:
        """A read that the CUDA kernel of this op makes inside ATen (module docstring)."""
        hidden = (name in HIDDEN_SYNC_OPS or (name in CHECKED_WHEN_ASKED and bool(kwargs.get("check_errors")))
                  or (name == "aten.index.Tensor" and _bool_index(args)))
        return hidden and (self.simulate_cuda or _on_cuda(args))


def _on_cuda(args: tuple) -> bool:
    return any(isinstance(a, torch.Tensor) and a.device.type == "cuda" for a in args)


def _bool_index(args: tuple) -> bool:
    """``x[mask]``: ATen turns a boolean mask into indices with ``nonzero``, a read of their count."""
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())
