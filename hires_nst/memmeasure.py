"""What a CUDA stage would allocate, measured on any machine: the real code on fake tensors.

``FakeTensorMode`` runs the real targets, objective and optimiser on tensors that have shapes,
dtypes and layouts but no data, so nothing is allocated; the code paths a GPU would take (the bf16
Gram products) take their CUDA branch (``CudaLikePrecision``) and nothing is allocated. ``LiveBytes``, a dispatch mode
beneath it, follows every storage an op creates until Python drops it, rounded up to the caching
allocator's 512-byte blocks, and keeps the peak: what ``torch.cuda.max_memory_allocated`` counts.
Not counted: cuDNN/cuBLAS workspaces and allocator fragmentation (``placement.MEMORY_MARGIN``
leaves room for those), and the CUDA context itself (outside what ``mem_get_info`` reports free).

Used to fit the coefficients of ``memmodel`` (``python -m hires_nst.memmeasure``) and by the tests
that hold the model to the measurement.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from hires_nst.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
from hires_nst.features import VGGFeatures
from hires_nst.hostsync import HostCounter
from hires_nst.objective import Weights, make_targets
from hires_nst.optimize import Stepper
from hires_nst.placement import CHANNELS_LAST, Precision
from hires_nst.tileplan import TileGrid, align_for, plan_tiles, required_halo
from hires_nst.tiling import make_objective

BLOCK = 512  # CUDA caching allocator: every allocation is rounded up to a multiple of 512 bytes
DEFAULT_LAYERS = (tuple(DEFAULT_CONTENT_LAYERS), tuple(DEFAULT_STYLE_LAYERS))


class LiveBytes(TorchDispatchMode):
    """Bytes of tensor storage alive, and their peak, over the ops run inside this mode.

    A storage is counted once, when an op first returns a tensor on it (views share it), and
    uncounted when its last Python reference goes (a weakref callback), as the caching allocator
    frees a block when its storage dies.
    """

    def __init__(self, snapshot: bool = False) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._sizes: Any = WeakIdKeyDictionary()
        self._refs: dict[int, weakref.ref] = {}
        # With ``snapshot``: what was alive at the peak, as (bytes, shape, dtype, op) per storage.
        self.snapshot = snapshot
        self._what: dict[int, tuple[int, tuple[int, ...], torch.dtype, str]] = {}
        self.at_peak: list[tuple[int, tuple[int, ...], torch.dtype, str]] = []

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self._track(leaf, str(func))
        return out

    def _track(self, tensor: Tensor, op: str) -> None:
        storage = tensor.untyped_storage()
        if storage in self._sizes:
            return
        size = -(-storage.nbytes() // BLOCK) * BLOCK
        self._sizes[storage] = size
        self.live += size
        key = id(storage)
        self._refs[key] = weakref.ref(storage, functools.partial(self._release, size, key))
        if self.snapshot:
            self._what[key] = (size, tuple(tensor.shape), tensor.dtype, op)
        if self.live > self.peak:
            self.peak = self.live
            if self.snapshot:
                self.at_peak = list(self._what.values())

    def _release(self, size: int, key: int, _ref: object) -> None:
        self.live -= size
        self._refs.pop(key, None)
        self._what.pop(key, None)


class CudaLikePrecision(Precision):
    """``Precision`` that takes the CUDA branches (bf16 Gram products) on fake CPU tensors.

    Why fake *CPU* tensors: autograd's engine asks the CUDA driver about the device of every
    backward pass, so a backward on fake CUDA tensors fails on a machine without CUDA. The
    tensors a stage creates are the same on both (shapes, dtypes, layouts; autocast casts the
    convolutions to bf16 on both); what differs is only the code that branches on the device,
    and that asks ``Precision`` (``low_precision_products``), which answers as for CUDA here.
    """

    def low_precision_products(self, device: torch.device) -> bool:
        return self.name != "fp32"


@functools.lru_cache(maxsize=4)
def _real_extractor(layers: tuple[str, ...]) -> VGGFeatures:
    """A VGG19 with untrained weights (memory does not depend on their values), built once."""
    from hires_nst.weights import load_weights

    with torch.random.fork_rng():
        return VGGFeatures(load_weights("random"), layers)


def fake_extractor(mode: FakeTensorMode, layers: Sequence[str], device: torch.device,
                   precision: Precision) -> VGGFeatures:
    """A copy of the extractor whose weights are fake tensors on ``device``, laid out as
    ``precision.prepare`` lays them (``Module.to`` cannot swap fake parameters in place).

    Call it outside ``mode``: the copy is made of the real module, then its tensors are faked.
    """
    extractor = copy.deepcopy(_real_extractor(tuple(dict.fromkeys(layers))))

    def fake(tensor: Tensor) -> Tensor:
        layout = torch.channels_last if precision.channels_last and tensor.dim() == 4 else torch.preserve_format
        return mode.from_tensor(tensor).to(device, memory_format=layout)

    for module in extractor.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                module._parameters[name] = nn.Parameter(fake(param), requires_grad=False)
        for name, buffer in list(module._buffers.items()):
            if buffer is not None:
                module._buffers[name] = fake(buffer)
    return extractor


@dataclass(frozen=True)
class Scenario:
    """One stage to measure: its size, tiling, precision and optimiser."""

    width: int
    height: int
    tile: int | None = None
    precision: str = "bf16"
    optimizer: str = "lbfgs"
    history: int | None = None  # L-BFGS pairs; None: what the render would keep (optimize.lbfgs_history)
    layers: tuple[tuple[str, ...], tuple[str, ...]] = DEFAULT_LAYERS  # content layers, style layers
    iterations: int = 2


@dataclass(frozen=True)
class Measured:
    peak: int  # bytes, over the stage: targets, then the iterations (the state is full from the first)
    tiles: int  # windows per pass (1: untiled)
    window: tuple[int, int]  # the largest window, (width, height)
    at_peak: tuple[tuple[int, tuple[int, ...], torch.dtype, str], ...] = ()  # with snapshot=True
    ops: int = 0  # aten ops the host dispatched in the last iteration (hostsync.HostCounter)
    syncs: int = 0  # host reads of device values in it (a fake tensor cannot be read: any would raise)


def measure(scenario: Scenario, device: str = "cpu", snapshot: bool = False) -> Measured:
    """Run ``scenario`` as ``pyramid.run_stage`` does, on fake tensors, and return its peak.

    Live through the stage, as in a render: the content and style images at the stage size, the
    start image, the extractor's weights, the targets, the optimiser and its state.
    """
    content_layers, style_layers = scenario.layers
    weights = Weights.equal_layers(1.0, 1e3, 0.0, content_layers, style_layers)
    precision = CudaLikePrecision(scenario.precision, channels_last=CHANNELS_LAST)
    target = torch.device(device)
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    extractor = fake_extractor(mode, [*content_layers, *style_layers], target, precision)
    tracker = LiveBytes(snapshot)
    with mode, tracker, _history(scenario.history):
        for module in extractor.modules():
            for name, param in list(module._parameters.items()):
                if param is not None:  # a fresh copy inside the tracker, so that the weights count
                    module._parameters[name] = nn.Parameter(param.clone(memory_format=torch.preserve_format),
                                                            requires_grad=False)
        shape = (1, 3, scenario.height, scenario.width)
        content, style = torch.rand(shape, device=target), torch.rand(shape, device=target)
        start = torch.rand(shape, device=target)
        grid = TileGrid.for_layers([*content_layers, *style_layers], scenario.tile)
        targets = make_targets(extractor, content, [style], [], weights, precision, grid)
        objective = make_objective(extractor, targets, weights, grid.tiles(scenario.width, scenario.height), precision)
        stepper = Stepper(start, objective, scenario.optimizer, 1.0)
        for _ in range(scenario.iterations - 1):
            stepper.step()
        with HostCounter() as counter:
            stepper.step()
        # Not run: the stage's closing objective.loss, a no-grad pass over what iteration 2 held
        # with its gradients: it cannot be the peak.
        tiles = getattr(objective, "tiles", None)
        peak = tracker.peak
    if tiles:
        window = max(((t.window.width, t.window.height) for t in tiles), key=lambda wh: wh[0] * wh[1])
    else:
        window = (scenario.width, scenario.height)
    return Measured(peak, len(tiles) if tiles else 1, window, tuple(tracker.at_peak), counter.ops, counter.syncs)


@contextlib.contextmanager
def _history(pairs: int | None) -> Iterator[None]:
    """Force L-BFGS' history to ``pairs`` (to separate its bytes from the rest), or leave it."""
    if pairs is None:
        yield
        return
    from hires_nst import optimize

    saved = optimize.lbfgs_history
    optimize.lbfgs_history = lambda pixels: pairs
    try:
        yield
    finally:
        optimize.lbfgs_history = saved


def tiles_of(width: int, height: int, tile: int | None, layers=DEFAULT_LAYERS) -> int:
    """Windows per pass for this tiling (1 when untiled): to keep measurements short."""
    if tile is None:
        return 1
    names = [*layers[0], *layers[1]]
    return len(plan_tiles(width, height, tile, required_halo(names), align_for(names)))


# --------------------------------------------------------------------------- fitting memmodel.TABLE

ALL_LAYERS = (tuple(DEFAULT_CONTENT_LAYERS), tuple(f"conv{b}_{c}" for b, n in enumerate((2, 2, 4, 4, 4), 1)
                                                  for c in range(1, n + 1)))
LAYER_SETS = {"default": DEFAULT_LAYERS, "all": ALL_LAYERS}
FIT_UNTILED = ((1024, 1024), (2048, 2048))  # two sizes: slope and intercept
FIT_TILED = ((2048, 2048, 1024), (4096, 4096, 1024), (4096, 4096, 2048))  # image pixels and window vary apart
MARGIN = 1.01  # fitted per-pixel figures are raised 1% (rounding of the fit, peaks that move)


def _solve3(rows: list[tuple[float, float, float, float]]) -> tuple[float, float, float]:
    """Solve ``a + b x + c y = z`` through three points (Cramer's rule)."""
    import numpy as np

    matrix = np.array([[1.0, x, y] for x, y, _, _ in rows])
    values = np.array([z for _, _, z, _ in rows])
    a, b, c = np.linalg.solve(matrix, values)
    return float(a), float(b), float(c)


def fit(precision: str, layer_set: str) -> tuple[tuple[int, float], tuple[int, float, float]]:
    """Untiled (fixed, per pixel) and tiled (fixed, per pixel, per window pixel), L-BFGS state out."""
    from hires_nst.memmodel import OPTIMIZER_BYTES, PAIR_BYTES

    layers = LAYER_SETS[layer_set]
    state = OPTIMIZER_BYTES["lbfgs"] + PAIR_BYTES  # the one pair the fits run with
    (w1, h1), (w2, h2) = FIT_UNTILED
    p1 = measure(Scenario(w1, h1, None, precision, history=1, layers=layers)).peak
    p2 = measure(Scenario(w2, h2, None, precision, history=1, layers=layers)).peak
    slope = (p2 - p1) / (w2 * h2 - w1 * h1)
    untiled = (max(0, int(p1 - slope * w1 * h1)), slope * MARGIN - state)
    rows = []
    for width, height, tile in FIT_TILED:
        got = measure(Scenario(width, height, tile, precision, history=1, layers=layers))
        rows.append((width * height, got.window[0] * got.window[1], got.peak, 0.0))
    fixed, per_pixel, per_window = _solve3(rows)
    tiled = (max(0, int(fixed)), per_pixel * MARGIN - state, per_window * MARGIN)
    return untiled, tiled


def pair_bytes_per_pixel(size: int = 1024) -> float:
    """Measured bytes per image pixel of one more L-BFGS pair (memmodel assumes 2 x 12)."""
    one = measure(Scenario(size, size, history=1)).peak
    five = measure(Scenario(size, size, history=5)).peak
    return (five - one) / (4 * size * size)


def table_source() -> str:
    """``memmodel.TABLE`` as Python source, freshly fitted."""
    lines = []
    floor: dict[str, float] = {}
    for layer_set in LAYER_SETS:  # "default" first
        for precision in ("fp32", "bf16"):
            untiled, tiled = fit(precision, layer_set)
            # More layers cannot mean fewer whole-image buffers: a fit that trades them for window
            # bytes (the three tiled points are close to collinear) must not under-count huge images.
            per_pixel = max(tiled[1], floor.setdefault(precision, tiled[1]))
            tiled = (tiled[0], per_pixel, tiled[2])
            lines.append(f'    ("{precision}", False, "{layer_set}"): Coefficients({untiled[0]}, {untiled[1]:.1f}, 0.0),')
            lines.append(f'    ("{precision}", True, "{layer_set}"): Coefficients({tiled[0]}, {tiled[1]:.1f}, {tiled[2]:.1f}),')
    return "\n".join(lines)


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    print(f"# one more L-BFGS pair: {pair_bytes_per_pixel():.1f} B per image pixel (memmodel.PAIR_BYTES = 24)")
    print(table_source())
