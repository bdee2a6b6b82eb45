"""Feature extractors kept warm between renders of one process: a notebook's second ``stylize()``,
a batch's next job.

Building one is not free: torchvision initialises every weight at random before ours are loaded
over them (~0.25 s for VGG19 on the dev CPU), and ``--weights torchvision`` or a file is read
again. The engine asks ``extractors.get(key, build)`` instead of building: ``key`` holds everything
the network depends on (``extractor_key``); precision is not in it, since autocast runs the same
fp32 weights.

Shared safely: a kept extractor is handed out again only as it was built: every module in eval
mode, no parameter that requires a gradient or holds one, no hook, no tensor changed in place
(their version counters as built; moving it to its device or to channels-last does not count).
One that differs is dropped and built anew. ``random`` weights are never kept: each render draws
its own. The last ``size`` networks are kept (52 MB each for VGG19 to conv5_1, on their device);
``extractors.clear()`` lets them go.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

Module = TypeVar("Module", bound=nn.Module)
Key = tuple[Hashable, ...]


def weights_identity(source: str) -> Hashable | None:
    """What the weights of ``--weights source`` are, as far as a key needs to know: the name of a
    fixed source, a file with its size and modification time (a file saved again is read again),
    or None where they are drawn anew (``random``) or cannot be had (the loader says why)."""
    if source == "random":
        return None
    if source in ("original", "torchvision"):
        return source
    path = Path(source).expanduser()
    try:
        status = path.stat()
        return str(path.resolve()), status.st_mtime_ns, status.st_size
    except OSError:
        return None


def extractor_key(backbone: str, weights: str, preprocessing: str, pooling: str, layers: Iterable[str],
                  device: torch.device) -> Key | None:
    """Everything an extractor depends on; None when it must be built each time (``weights_identity``)."""
    identity = weights_identity(weights)
    if identity is None:
        return None
    return backbone, identity, preprocessing, pooling, tuple(layers), str(device)


@dataclass(frozen=True)
class _Kept:
    extractor: nn.Module
    versions: tuple[int, ...]  # of its parameters and buffers, as built


def _versions(module: nn.Module) -> tuple[int, ...]:
    """Each tensor's version counter: bumped by every in-place change (``mul_``, ``load_state_dict``)."""
    return tuple(t._version for t in chain(module.parameters(), module.buffers()))


def _hooked(module: nn.Module) -> bool:
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in module.modules())


def as_built(kept: _Kept) -> bool:
    """Whether a kept extractor is still the one that was built (see the module's docstring)."""
    module = kept.extractor
    return (not any(m.training for m in module.modules())
            and not any(p.requires_grad or p.grad is not None for p in module.parameters())
            and not _hooked(module)
            and _versions(module) == kept.versions)


class ExtractorCache:
    """The last ``size`` extractors built, by key (least recently used goes first)."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._kept: OrderedDict[Key, _Kept] = OrderedDict()
        self._lock = threading.Lock()  # renders in threads may ask at once

    def get(self, key: Key | None, build: Callable[[], Module]) -> Module:
        """The kept extractor of ``key`` if it is as built, else ``build()`` (kept unless ``key`` is None)."""
        if key is None:
            return build()
        with self._lock:
            kept = self._kept.pop(key, None)
            if kept is not None and as_built(kept):
                self._kept[key] = kept  # the most recently used again
                return kept.extractor  # type: ignore[return-value]  # what build() made for this key
        extractor = build()  # outside the lock: a download must not hold up other keys
        with self._lock:
            self._kept[key] = _Kept(extractor, _versions(extractor))
            while len(self._kept) > self.size:
                self._kept.popitem(last=False)
        return extractor

    def keys(self) -> Sequence[Key]:
        with self._lock:
            return list(self._kept)

    def clear(self) -> None:
        """Let every kept network go (their memory, a GPU's too, is freed once no render holds them)."""
        with self._lock:
            self._kept.clear()


extractors = ExtractorCache()  # the process's: engine.render.build_extractor asks it
