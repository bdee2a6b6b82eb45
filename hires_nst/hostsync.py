"""Counting what the host does per iteration: tensor ops it launches, and reads that make it wait.

A GPU stays busy only while the host runs ahead of it. Two things stop that: reads of device
values (``.item()``, ``bool(t)``, ``float(t)``, ``tolist()``, a tensor passed where a number is
wanted, as torch's L-BFGS does with ``alpha=``), each a full wait for the device; and ops so many
and so small that launching them takes longer than running them. ``HostCounter`` counts both on
any device, a CPU included, so a test can hold the optimiser loop to them without a GPU.
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


class _Functions(TorchFunctionMode):
    def __init__(self, counter: "HostCounter") -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        if func in SYNC_METHODS:
            self.counter.syncs += 1
            self.counter.by_name[getattr(func, "__name__", str(func))] += 1
        return func(*args, **(kwargs or {}))


class HostCounter(TorchDispatchMode):
    """``ops``: aten ops dispatched (roughly, kernels launched); ``syncs``: host reads of device
    values, including a copy to the CPU of a tensor that lives elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = self.syncs = 0
        self.by_name: Counter[str] = Counter()
        self._functions = _Functions(self)

    def __enter__(self) -> "HostCounter":
        self._functions.__enter__()
        return super().__enter__()

    def __exit__(self, *exc) -> None:  # type: ignore[override]
        super().__exit__(*exc)
        self._functions.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        self.ops += 1
        name = str(func)
        to_host = (name == "aten._to_copy.default" and str(kwargs.get("device", "")) == "cpu"
                   and any(isinstance(a, torch.Tensor) and a.device.type != "cpu" for a in args))
        if name in SYNC_OPS or to_host:
            self.syncs += 1
            self.by_name[name] += 1
        return func(*args, **kwargs)
