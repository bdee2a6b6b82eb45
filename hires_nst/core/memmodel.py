"""How much device memory one stage takes: a table of measured coefficients, and the tile planner.

A stage's peak is modelled as ``fixed + per_pixel x (image pixels) + per_window_pixel x (pixels of
the largest window)``, plus the optimiser's state per image pixel. ``fixed`` is the network's
weights and the Gram matrices; ``per_pixel`` the whole-image buffers (content and style images,
start image, image, gradient, content target, pass-2 gradient); ``per_window_pixel`` one
evaluation's activations and gradients. Untiled, the window is the image, so the two per-pixel
terms are one number (``per_pixel``; ``per_window_pixel`` is 0). The table is the paper's loss
(Gram matrices); on top of it, what the other settings add:

* the w2 style loss (the default): a fixed allowance of ``W2_MATRICES`` C x C float64 matrices
  per layer (``statistics_bytes``), whatever computes its square roots (eigh, Newton-Schulz);
* iterate averaging (``--average-iterates``): its running sum, one image-sized vector;
* region guides (``--mask``/``--region``): per region its painting and guide pyramid per pixel
  and its own statistics (Gram targets, Gaussian fits), and the guided Gram products' fp32
  temporaries (``guided_bytes``).

The coefficients are not guessed: ``python -m hires_nst.engine.memmeasure`` runs the real targets,
objective and optimiser on fake tensors (``memmeasure``), fits them, and prints ``TABLE`` and
``GUIDED_COPIES`` below. ``tests/core/test_memmodel.py`` holds the model to new measurements of the
default loss, averaging, guides, small and odd sizes (never under, at most 1.25x over).
They count what the CUDA caching allocator hands out (``max_memory_allocated``), not cuDNN's
workspaces or fragmentation: the planner's budget keeps a margin for those
(``placement.MEMORY_MARGIN``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hires_nst.config.catalog import (
    BACKBONES,
    DEFAULT_CONTENT_LAYERS,
    DEFAULT_STYLE_LAYERS,
    LBFGS_OPTIMIZERS,
    alias,
)
from hires_nst.core.tiles import Tile, plan_tiles, round_up

LBFGS_HISTORY_BYTES = 2 * 2**30  # memory the curvature pairs may take at one stage
VECTOR = 3 * 4  # bytes per image pixel of one image-sized fp32 vector (gradient, moment, ...)


def lbfgs_history(pixels: int) -> int:
    """Curvature pairs kept: 100 (as neural-style) while they fit in 2 GiB, fewer at print sizes.

    Each pair is two image-sized fp32 vectors: at 4096x4096, 100 pairs would be 40 GB. The top
    stages run few iterations from a good start, where a short history loses little (SPST keeps
    10 pairs above its first scale; neural-style's multires recipe uses 5 at the top). The floor
    is one pair: a floor of 3 took 4.5 GiB at 8192x8192, over the cap it is there to keep.
    """
    return max(1, min(100, LBFGS_HISTORY_BYTES // (2 * VECTOR * pixels)))


@dataclass(frozen=True)
class Coefficients:
    fixed: int  # bytes
    per_pixel: float  # bytes per image pixel, without the optimiser's state
    per_window_pixel: float  # bytes per pixel of the largest window (0 untiled)


# Fitted by `python -m hires_nst.engine.memmeasure` (fake tensors, CUDA code paths, VGG19, the paper's
# loss, L-BFGS state taken out; intercepts raised to cover 16x16 to 512x384: see memmeasure.fit).
# Key: (precision, tiled, layer set). "default": conv4_2 content, conv1_1..conv5_1 style; "all":
# every VGG19 conv layer (the bound for any other set).
TABLE: dict[tuple[str, bool, str], Coefficients] = {
    ("fp32", False, "default"): Coefficients(62629090, 1467.1, 0.0),
    ("fp32", True, "default"): Coefficients(59119104, 93.5, 1353.4),
    ("bf16", False, "default"): Coefficients(88506650, 838.9, 0.0),
    ("bf16", True, "default"): Coefficients(78279483, 93.5, 686.5),
    ("fp32", False, "all"): Coefficients(119589520, 1499.4, 0.0),
    ("fp32", True, "all"): Coefficients(99314688, 93.5, 2403.8),
    ("bf16", False, "all"): Coefficients(159628058, 838.9, 0.0),
    ("bf16", True, "all"): Coefficients(99314688, 93.5, 1212.0),
}

# Optimiser state and step temporaries, bytes per image pixel (fp32 vectors of 12 B/px): L-BFGS
# keeps its accepted point, that point's gradient and the direction, plus two vectors per pair
# (PAIR_BYTES); Adam two moments and a temporary. Every optimiser but ours also keeps the best
# point it evaluated (optimize.Best: one vector more); ours keeps it as its accepted point.
# Measured at the peak (``memmeasure.optimizer_bytes``, bf16, 1024 -> 2048 px): L-BFGS 3 vectors
# and 2 per pair; Adam, AdamW and Adadelta 3 (their state and the best point), SGD, Adagrad and
# RMSprop 2. The torch.optim figures keep a temporary more (Adadelta two): on CUDA torch.optim
# steps with foreach kernels, whose temporaries a fake CPU run does not make, and in a tiled
# stage the whole-image step can outweigh a window's activations. lbfgs-torch reads values, so
# it cannot run on fake tensors: counted from its implementation.
PAIR_BYTES = 2 * VECTOR
# One entry per optimiser that the config takes (catalog.OPTIMIZERS; a test holds the two equal).
OPTIMIZER_BYTES = {"lbfgs": 3 * VECTOR, "lbfgs-torch": 5 * VECTOR, "adam": 4 * VECTOR, "adamw": 4 * VECTOR,
                   "sgd": 3 * VECTOR, "adagrad": 3 * VECTOR, "adadelta": 5 * VECTOR, "rmsprop": 3 * VECTOR}
AVERAGE_BYTES = VECTOR  # --average-iterates: the running sum (averaging.IterateAverage; measured 12 B/px)
DEFAULT_LAYER_SET = frozenset(DEFAULT_CONTENT_LAYERS) | frozenset(DEFAULT_STYLE_LAYERS)

# The style statistics beyond the table's (one set of Gram matrices): C x C matrices per layer.
# w2 keeps, per region, float64 matrices: the target's covariance and root, the image's covariance,
# the cross product, its square root and what that keeps for the gradient: measured with eigh
# 18.7 MB at the default layers (2.7 matrices of all six, the content layer counted too, as
# ``statistics_bytes`` does). Budgeted, not fitted, so that another square root (Newton-Schulz,
# ~10 MB) needs no new table: 4. Each region after the first adds its own Gram targets and sums
# (fp32, measured 10.4 MB: 3.0 matrices): 4.
W2_MATRICES = 4
REGION_MATRICES = 4
# Regions, per styled region and image pixel: its painting (12 B/px) and its guide at every depth
# (4 B/px at the stage's size, a third of that below): measured 18-20 B/px.
REGION_BYTES = 2 * VECTOR
# The guided Gram products widen features to fp32 slices of this many positions (guides.WIDEN_CHUNK:
# memmodel stays free of torch; a test holds the two equal).
GUIDE_CHUNK = 2**20
# fp32 slices of the widest layer that the guided products keep at their peak beyond what the
# unguided ones do (``guided_bytes``), by (precision, tiled). Fitted by `python -m hires_nst.engine.memmeasure`
# (memmeasure.fit_guided).
GUIDED_COPIES = {("fp32", False): 0.59, ("fp32", True): 0.53, ("bf16", False): 2.64, ("bf16", True): 2.22}


def layer_set(layers: Iterable[str]) -> str:
    """``default`` when ``layers`` are among the default ones, else ``all`` (the upper bound; also
    the rough figure for other backbones' layers, which are never tiled)."""
    return "default" if {alias(n) for n in layers} <= DEFAULT_LAYER_SET else "all"


def _layer_shape(name: str) -> tuple[int, int]:
    """(channels, depth) of a layer of any backbone: depth halvings of the image's sides."""
    for backbone in BACKBONES.values():
        for info in backbone.layers:
            if name == info.name or name in info.aliases:
                return info.channels, info.depth
    return max(i.channels for b in BACKBONES.values() for i in b.layers), 0  # unknown: the widest, at full size


def statistics_bytes(layers: Iterable[str], style_loss: str = "w2", regions: int = 0) -> int:
    """C x C matrices beyond the table's: ``W2_MATRICES`` float64 ones per layer and region for w2,
    ``REGION_MATRICES`` float32 ones per layer for each region after the first.

    Every layer of ``layers`` is counted, the content layers too: an upper bound that needs no split
    of the names."""
    per_matrix = sum(_layer_shape(n)[0] ** 2 for n in set(layers))
    w2 = W2_MATRICES * 8 * per_matrix * max(1, regions) if style_loss == "w2" else 0
    return w2 + REGION_MATRICES * 4 * per_matrix * max(0, regions - 1)


def guided_bytes(window_pixels: int, layers: Iterable[str], tiled: bool) -> int:
    """One fp32 slice of the widest guided product: ``4 C min(positions, GUIDE_CHUNK)`` at the layer
    where it is largest. Untiled the guided Gram's backward slices positions (``GUIDE_CHUNK``);
    tiled, pass 2 takes each core whole (``guides.guided_gradient``)."""
    sizes = []
    for name in set(layers):
        channels, depth = _layer_shape(name)
        positions = window_pixels >> (2 * depth)
        sizes.append(channels * (positions if tiled else min(positions, GUIDE_CHUNK)))
    return 4 * max(sizes, default=0)


def state_bytes_per_pixel(optimizer: str, pixels: int, average: bool = False) -> int:
    """The optimiser's bytes per image pixel at this size (L-BFGS: its base plus its pairs), and the
    iterates' average with ``average``."""
    extra = OPTIMIZER_BYTES.get(optimizer, 4 * VECTOR) + (AVERAGE_BYTES if average else 0)
    if optimizer in LBFGS_OPTIMIZERS:
        extra += PAIR_BYTES * lbfgs_history(pixels)
    return extra


def whole_image_bytes_per_pixel(pixels: int, *, precision: str = "fp32", optimizer: str = "lbfgs",
                                layers: Iterable[str] = DEFAULT_LAYER_SET, style_loss: str = "w2",
                                average: bool = False, regions: int = 0) -> float:
    """Bytes per image pixel that a tiled stage keeps for the whole image (optimiser state, the
    average and the regions' paintings and guides included): what the main device holds beyond its
    own band when a stage is spread over devices. (``style_loss`` has no per-pixel part: it is
    taken so that every function of the model takes the same settings.)"""
    kind = "bf16" if precision in ("bf16", "fp16") else "fp32"
    return (TABLE[(kind, True, layer_set(layers))].per_pixel + state_bytes_per_pixel(optimizer, pixels, average)
            + REGION_BYTES * regions)


def largest_window(tiles: Sequence[Tile]) -> tuple[int, int] | None:
    """Pixels of the largest of these windows and their count; None when there is one (untiled)."""
    if len(tiles) < 2:
        return None
    return max(t.window.width * t.window.height for t in tiles), len(tiles)


def estimate(width: int, height: int, tile: int | None = None, halo: int = 0, align: int = 16, *,
             precision: str = "fp32", optimizer: str = "lbfgs", layers: Iterable[str] = DEFAULT_LAYER_SET,
             style_loss: str = "w2", average: bool = False, regions: int = 0,
             tiles: Sequence[Tile] | None = None) -> int:
    """Peak bytes of one stage (``width`` x ``height``, ``tile`` px tiles or untiled) on a GPU.

    ``style_loss`` (gram or w2, the default), ``average`` (--average-iterates) and ``regions`` (the
    styled regions of --mask/--region, 0: none) add what they keep (see the module's docstring).
    ``tiles``: the stage's windows, when the caller planned them already (the render plan); else a
    candidate tiling is laid out here (``plan_tile`` prices several).
    """
    layers = tuple(layers)
    if tiles is None:
        tiles = plan_tiles(width, height, tile, halo, align) if tile is not None else ()
    window = largest_window(tiles)
    kind = "bf16" if precision in ("bf16", "fp16") else "fp32"
    coefficients = TABLE[(kind, window is not None, layer_set(layers))]
    pixels = width * height
    per_pixel = coefficients.per_pixel + state_bytes_per_pixel(optimizer, pixels, average) + REGION_BYTES * regions
    window_pixels = window[0] if window is not None else 0
    extra: float = statistics_bytes(layers, style_loss, regions)
    if regions:
        tiled = window is not None
        extra += GUIDED_COPIES[(kind, tiled)] * guided_bytes(window_pixels or pixels, layers, tiled)
    return int(math.ceil(coefficients.fixed + per_pixel * pixels + coefficients.per_window_pixel * window_pixels
                         + extra))


# The smallest tile the render picks itself (--tile-size auto, and the out-of-memory retries that
# halve a tile): a 64 px core reads a window of up to 64 + 2 x 80 px at the default layers' halo,
# 12x its pixels, and smaller cores would cost more in halo than they save. A typed --tile-size
# may go down to ``settings.MIN_TYPED_TILE``; ``plan_tiles`` itself takes any side >= 1.
MIN_AUTO_TILE = 64


def plan_tile(width: int, height: int, halo: int, budget: int, align: int = 16, min_tile: int = MIN_AUTO_TILE, *,
              precision: str = "fp32", optimizer: str = "lbfgs", layers: Iterable[str] = DEFAULT_LAYER_SET,
              style_loss: str = "w2", average: bool = False, regions: int = 0) -> int | None:
    """The tile side to run a stage with in ``budget`` bytes; None when the whole image fits.

    Tries 2, 3, ... tiles along the long side, each the balanced side ``ceil(long / n)`` (rounded
    up to ``align``), and takes the first that fits: the fewest tiles, and among tilings with that
    count the smallest windows (less halo work than the largest side that fits would leave in
    the last tile). ``min_tile`` when nothing fits (the render's out-of-memory retry reports it).
    """
    layers = tuple(layers)
    kwargs: dict[str, Any] = {"precision": precision, "optimizer": optimizer, "layers": layers,
                              "style_loss": style_loss, "average": average, "regions": regions}
    if estimate(width, height, None, halo, align, **kwargs) <= budget:
        return None
    long_side = max(width, height)
    for count in range(2, long_side // min_tile + 1):
        tile = round_up(-(-long_side // count), align)
        if tile < min_tile:
            break
        if estimate(width, height, tile, halo, align, **kwargs) <= budget:
            return tile
    return min_tile
