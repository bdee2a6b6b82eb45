"""What a CUDA stage would allocate, measured on any machine: the real code on fake tensors.

``FakeTensorMode`` runs the real targets, objective and optimiser on tensors that have shapes,
dtypes and layouts but no data, so nothing is allocated; the code paths a GPU would take (the bf16
Gram products) take their CUDA branch (``CudaLikePrecision``) and nothing is allocated. ``LiveBytes``, a dispatch mode
beneath it, follows every storage an op creates until Python drops it, rounded up to the caching
allocator's 512-byte blocks, and keeps the peak: what ``torch.cuda.max_memory_allocated`` counts.
Not counted: cuDNN/cuBLAS workspaces and allocator fragmentation (``placement.MEMORY_MARGIN``
leaves room for those), and the CUDA context itself (outside what ``mem_get_info`` reports free).

Used to fit the coefficients of ``memmodel`` (``python -m hires_nst.engine.memmeasure``) and by the tests
that hold the model to the measurement.

Over 300 lines on purpose: a measuring harness: fake tensors, scenarios and the fit of the model's coefficients.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from hires_nst.config.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, LBFGS_OPTIMIZERS, OPTIMIZERS
from hires_nst.core.guides import RegionGuide
from hires_nst.core.tiles import TileGrid, align_for, required_halo
from hires_nst.engine.objective import Weights, make_targets
from hires_nst.engine.optimize import Stepper
from hires_nst.engine.tiling import make_objective
from hires_nst.model.backbones import FeatureExtractor
from hires_nst.model.features import VGGFeatures
from hires_nst.runtime.hostsync import HostCounter
from hires_nst.runtime.placement import CHANNELS_LAST, Precision

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

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
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
    from hires_nst.model.weights import load_weights

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
    loss: str = "default"  # "default": the render's (w2, halving layer weights); or a preset's name ("gatys")
    average: float = 0.0  # --average-iterates: the decay of the iterates' moving average (0: none)
    regions: int = 0  # styled regions (--mask/--region): a guide and a painting of its own each


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
        stage = build_stage(scenario, extractor, precision, target)
        for _ in range(scenario.iterations - 1):
            stage.stepper.step()
        with HostCounter() as counter:
            stage.stepper.step()
        # Not run: the stage's closing objective.loss, a no-grad pass over what iteration 2 held
        # with its gradients: it cannot be the peak.
        tiles = getattr(stage.objective, "tiles", None)
        peak = tracker.peak
    if tiles:
        window = max(((t.window.width, t.window.height) for t in tiles), key=lambda wh: wh[0] * wh[1])
    else:
        window = (scenario.width, scenario.height)
    return Measured(peak, len(tiles) if tiles else 1, window, tuple(tracker.at_peak), counter.ops, counter.syncs)


@dataclass
class BuiltStage:
    """A stage ready to step, and what a render keeps alive beside it for the whole stage: the
    content, the paintings and the start image (``pyramid.StageInputs``, ``run_stage``'s start)."""

    stepper: Stepper
    objective: Callable[[Tensor], dict[str, Tensor]]
    inputs: tuple[Tensor, ...]


def build_stage(scenario: Scenario, extractor: FeatureExtractor, precision: Precision,
                device: torch.device) -> BuiltStage:
    """The stage as ``pyramid.run_stage`` builds it, from random images at the stage's size: the
    targets, the objective and the optimiser stepping it. The one builder of the fake measurement
    and of the real runs on a GPU (benchmarks/gpu_model.py, benchmarks/gpu_check.py)."""
    content_layers, style_layers = scenario.layers
    weights = scenario_weights(scenario)
    shape = (1, 3, scenario.height, scenario.width)
    content, start = torch.rand(shape, device=device), torch.rand(shape, device=device)
    styles = [torch.rand(shape, device=device) for _ in range(max(1, scenario.regions))]
    regions = scenario_regions(scenario, device)
    grid = TileGrid.for_layers([*content_layers, *style_layers], scenario.tile)
    targets = make_targets(extractor, content, styles, [], weights, precision, grid, regions)
    objective = make_objective(extractor, targets, weights, grid.tiles(scenario.width, scenario.height), precision)
    stepper = Stepper(start, objective, scenario.optimizer, 1.0, average=scenario.average)
    guide = () if regions is None else (regions.guide,)
    return BuiltStage(stepper, objective, (content, start, *styles, *guide))


def scenario_weights(scenario: Scenario) -> Weights:
    """The loss weights a render with ``scenario.loss`` would use over the scenario's layers."""
    return settings_weights(scenario.loss, *scenario.layers)


def settings_weights(loss: str = "default", content_layers: Sequence[str] = DEFAULT_CONTENT_LAYERS,
                     style_layers: Sequence[str] = DEFAULT_STYLE_LAYERS) -> Weights:
    """The loss weights of a render (``plan.loss_weights``) with the default settings
    (``loss`` "default") or a built-in preset's (e.g. "gatys"), over these layers."""
    from hires_nst.config.presets import load_preset
    from hires_nst.config.settings import resolve
    from hires_nst.engine.plan import loss_weights

    layers = [] if loss == "default" else [(loss, load_preset(loss).layer)]
    chosen = {"loss": {"content_layers": tuple(content_layers), "style_layers": tuple(style_layers)}}
    return loss_weights(resolve(*layers, ("layers", chosen)))


def model_settings(scenario: Scenario) -> dict[str, Any]:
    """What ``memmodel.estimate`` is told about ``scenario`` besides its size and tiling."""
    content_layers, style_layers = scenario.layers
    return {"precision": scenario.precision, "optimizer": scenario.optimizer,
            "layers": (*content_layers, *style_layers), "style_loss": scenario_weights(scenario).style_loss,
            "average": scenario.average > 0, "regions": scenario.regions}


def estimated(scenario: Scenario) -> int:
    """The model's peak for ``scenario`` (``memmodel.estimate``), with the halo and alignment its layers need."""
    from hires_nst.core.memmodel import estimate

    settings = model_settings(scenario)
    halo, align = required_halo(settings["layers"]), align_for(settings["layers"])
    return estimate(scenario.width, scenario.height, scenario.tile, halo, align, **settings)


def scenario_regions(scenario: Scenario, device: torch.device) -> RegionGuide | None:
    """``scenario.regions`` guides at its size (None without regions)."""
    if not scenario.regions:
        return None
    return random_regions(scenario.regions, scenario.width, scenario.height, device)


def random_regions(count: int, width: int, height: int, device: torch.device) -> RegionGuide:
    """``count`` soft guides over a ``width`` x ``height`` image, region r styled by painting r."""
    guide = torch.rand(count, height, width, device=device)
    return RegionGuide(guide, tuple(range(count)), (1.0,) * count)


@contextlib.contextmanager
def _history(pairs: int | None) -> Iterator[None]:
    """Force L-BFGS' history to ``pairs`` (to separate its bytes from the rest), or leave it."""
    if pairs is None:
        yield
        return
    from hires_nst.engine import optimize

    saved = optimize.lbfgs_history
    optimize.lbfgs_history = lambda pixels: pairs
    try:
        yield
    finally:
        optimize.lbfgs_history = saved


# --------------------------------------------------------------------------- fitting memmodel's figures

ALL_LAYERS = (tuple(DEFAULT_CONTENT_LAYERS), tuple(f"conv{b}_{c}" for b, n in enumerate((2, 2, 4, 4, 4), 1)
                                                  for c in range(1, n + 1)))
LAYER_SETS = {"default": DEFAULT_LAYERS, "all": ALL_LAYERS}
TABLE_LOSS = "gatys"  # the table is the paper's loss; memmodel adds w2, averaging and regions on top
FIT_UNTILED = ((1024, 1024), (2048, 2048))  # two sizes: slope and intercept
# Small and odd sizes the intercept is raised to cover: there the peak is made of other tensors
# (the C x C loss arithmetic, L-BFGS' 100 pairs), so the line through the large sizes fell short,
# by 7% at 256x192 before and more below it: down to 16 x 16, the smallest image VGG19 takes to conv5_1.
COVER_UNTILED = ((16, 16), (96, 64), (256, 192), (512, 384))
FIT_TILED = ((2048, 2048, 1024), (4096, 4096, 1024), (4096, 4096, 2048))  # image pixels and window vary apart
COVER_TILED = ((1024, 768, 512),)
# Regions, for GUIDED_COPIES: untiled sizes below and above the guided products' slice; tiled ones
# up to windows where the guided products decide the peak: there their share grows with the window
# (pass 2 takes each core whole), so the largest tiles a render plans are measured (6144 px).
FIT_GUIDED = ((512, 512, None), (1024, 1024, None), (2048, 2048, None), (4096, 4096, None), (2048, 2048, 1024),
              (4096, 4096, 2048), (6144, 4096, 3072), (8192, 8192, 4096), (12288, 8192, 6144))
MARGIN = 1.01  # fitted per-pixel figures are raised 1% (rounding of the fit, peaks that move)
GUIDED_MARGIN = 1.1  # and the guided products' copies 10%: their peak moves between layers with the size


def _solve3(rows: list[tuple[float, float, float, float]]) -> tuple[float, float, float]:
    """Solve ``a + b x + c y = z`` through three points (Cramer's rule)."""
    import numpy as np

    matrix = np.array([[1.0, x, y] for x, y, _, _ in rows])
    values = np.array([z for _, _, z, _ in rows])
    a, b, c = np.linalg.solve(matrix, values)
    return float(a), float(b), float(c)


def _peak(width: int, height: int, tile: int | None, precision: str, layers=DEFAULT_LAYERS,
          history: int | None = 1) -> Measured:
    """The table's measurement: the paper's loss, L-BFGS with one pair (``history``)."""
    return measure(Scenario(width, height, tile, precision, history=history, layers=layers, loss=TABLE_LOSS))


def fit(precision: str, layer_set: str) -> tuple[tuple[int, float], tuple[int, float, float]]:
    """Untiled (fixed, per pixel) and tiled (fixed, per pixel, per window pixel), L-BFGS state out.

    The intercepts are then raised until the lines cover every measured point, the small sizes of
    ``COVER_*`` included, measured with the pairs a render keeps there: the model must never be under."""
    from hires_nst.core.memmodel import OPTIMIZER_BYTES, PAIR_BYTES, state_bytes_per_pixel

    layers = LAYER_SETS[layer_set]
    state = OPTIMIZER_BYTES["lbfgs"] + PAIR_BYTES  # the one pair the fits run with
    (w1, h1), (w2, h2) = FIT_UNTILED
    p1, p2 = (_peak(w, h, None, precision, layers).peak for w, h in FIT_UNTILED)
    slope = (p2 - p1) / (w2 * h2 - w1 * h1) * MARGIN
    points = [(w1 * h1, p1 - state * w1 * h1), (w2 * h2, p2 - state * w2 * h2)]
    for w, h in COVER_UNTILED:
        peak = _peak(w, h, None, precision, layers, history=None).peak
        points.append((w * h, peak - state_bytes_per_pixel("lbfgs", w * h) * w * h))
    untiled = (max(0, max(int(math.ceil(p - (slope - state) * px)) for px, p in points)), slope - state)
    rows: list[tuple[float, float, float, float]] = []
    for width, height, tile in FIT_TILED:
        got = _peak(width, height, tile, precision, layers)
        rows.append((width * height, got.window[0] * got.window[1], got.peak - state * width * height, 0.0))
    fixed, per_pixel, per_window = _solve3(rows)
    for width, height, tile in COVER_TILED:
        got = _peak(width, height, tile, precision, layers, history=None)
        pixels = width * height
        rows.append((pixels, got.window[0] * got.window[1],
                     got.peak - state_bytes_per_pixel("lbfgs", pixels) * pixels, 0.0))
    per_pixel, per_window = (per_pixel + state) * MARGIN - state, per_window * MARGIN
    fixed = max(fixed, *(p - per_pixel * px - per_window * win for px, win, p, _ in rows))
    return untiled, (max(0, int(math.ceil(fixed))), per_pixel, per_window)


def fit_guided(precision: str, tiled: bool) -> float:
    """``memmodel.GUIDED_COPIES[(precision, tiled)]``: what two regions add beyond the paper's loss
    without them, less their counted parts (paintings and guides, ``statistics_bytes``), in slices
    of ``memmodel.guided_bytes``; the largest over ``FIT_GUIDED`` and both losses, with a margin."""
    from hires_nst.core.memmodel import REGION_BYTES, guided_bytes, statistics_bytes

    layers, regions = [*DEFAULT_LAYERS[0], *DEFAULT_LAYERS[1]], 2
    copies = 0.0
    for width, height, tile in FIT_GUIDED:
        if (tile is not None) != tiled:
            continue
        base = _peak(width, height, tile, precision)
        window = base.window[0] * base.window[1]
        for loss, style_loss in (("default", "w2"), (TABLE_LOSS, "gram")):
            got = measure(Scenario(width, height, tile, precision, history=1, loss=loss, regions=regions)).peak
            counted = REGION_BYTES * regions * width * height + statistics_bytes(layers, style_loss, regions)
            copies = max(copies, (got - base.peak - counted) / guided_bytes(window, layers, tiled))
    return round(copies * GUIDED_MARGIN, 2)


def pair_bytes_per_pixel(size: int = 1024) -> float:
    """Measured bytes per image pixel of one more L-BFGS pair (memmodel assumes 2 x 12)."""
    one = measure(Scenario(size, size, history=1)).peak
    five = measure(Scenario(size, size, history=5)).peak
    return (five - one) / (4 * size * size)


def optimizer_bytes(sizes: tuple[int, int] = (1024, 2048), names: Sequence[str] = ()) -> dict[str, float]:
    """Each optimiser's bytes per image pixel at the peak (all but L-BFGS and lbfgs-torch, or
    ``names``), measured as its slope over L-BFGS' with one pair, whose state memmodel counts as
    3 + 2 vectors (``pair_bytes_per_pixel`` measures the pair). lbfgs-torch reads values: not here."""
    from hires_nst.core.memmodel import OPTIMIZER_BYTES, PAIR_BYTES

    def slope(optimizer: str) -> float:
        small, large = (measure(Scenario(s, s, optimizer=optimizer, history=1, loss=TABLE_LOSS)).peak for s in sizes)
        return (large - small) / (sizes[1] ** 2 - sizes[0] ** 2)

    lbfgs = slope("lbfgs")
    names = list(names) or [n for n in OPTIMIZERS if n not in LBFGS_OPTIMIZERS]
    return {n: OPTIMIZER_BYTES["lbfgs"] + PAIR_BYTES + slope(n) - lbfgs for n in names}


def table_source() -> str:
    """``memmodel.TABLE`` and ``GUIDED_COPIES`` as Python source, freshly fitted."""
    lines = []
    floor: dict[str, float] = {}
    for layer_set in LAYER_SETS:  # "default" first
        for precision in ("fp32", "bf16"):
            untiled, tiled = fit(precision, layer_set)
            # More layers cannot mean fewer whole-image buffers: a fit that trades them for window
            # bytes (the three tiled points are close to collinear) must not under-count huge images.
            per_pixel = max(tiled[1], floor.setdefault(precision, tiled[1]))
            tiled = (tiled[0], per_pixel, tiled[2])
            lines.append(f'    ("{precision}", False, "{layer_set}"): '
                         f'Coefficients({untiled[0]}, {untiled[1]:.1f}, 0.0),')
            lines.append(f'    ("{precision}", True, "{layer_set}"): '
                         f'Coefficients({tiled[0]}, {tiled[1]:.1f}, {tiled[2]:.1f}),')
    copies = {(precision, tiled): fit_guided(precision, tiled) for precision in ("fp32", "bf16")
              for tiled in (False, True)}
    lines.append(f"GUIDED_COPIES = {copies}")
    return "\n".join(lines)


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    print(f"# one more L-BFGS pair: {pair_bytes_per_pixel():.1f} B per image pixel (memmodel.PAIR_BYTES = 24)")
    measured = ", ".join(f"{name} {value:.1f}" for name, value in optimizer_bytes().items())
    print(f"# optimiser bytes per image pixel at the peak (L-BFGS 36 with one pair): {measured} "
          "(memmodel.OPTIMIZER_BYTES)")
    print(table_source())
