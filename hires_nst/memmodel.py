"""How much device memory one stage takes: a table of measured coefficients, and the tile planner.

A stage's peak is modelled as ``fixed + per_pixel x (image pixels) + per_window_pixel x (pixels of
the largest window)``, plus the optimiser's state per image pixel. ``fixed`` is the network's
weights and the Gram matrices; ``per_pixel`` the whole-image buffers (content and style images,
start image, image, gradient, content target, pass-2 gradient); ``per_window_pixel`` one
evaluation's activations and gradients. Untiled, the window is the image, so the two per-pixel
terms are one number (``per_pixel``; ``per_window_pixel`` is 0).

The coefficients are not guessed: ``python -m hires_nst.memmeasure`` runs the real targets,
objective and optimiser on fake tensors (``memmeasure``), fits them, and prints ``TABLE`` below.
``tests/test_memmodel.py`` holds the model to new measurements (never under, at most 1.25x over).
They count what the CUDA caching allocator hands out (``max_memory_allocated``), not cuDNN's
workspaces or fragmentation: the planner's budget keeps a margin for those
(``placement.MEMORY_MARGIN``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

from hires_nst.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
from hires_nst.tileplan import plan_tiles, round_up

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


# Fitted by `python -m hires_nst.memmeasure` (fake tensors, CUDA code paths, VGG19, L-BFGS state
# taken out; see memmeasure.fit). Key: (precision, tiled, layer set). "default": conv4_2 content,
# conv1_1..conv5_1 style; "all": every VGG19 conv layer (the bound for any other set).
TABLE: dict[tuple[str, bool, str], Coefficients] = {
    ("fp32", False, "default"): Coefficients(55625216, 1467.0, 0.0),
    ("fp32", True, "default"): Coefficients(59118080, 93.4, 1353.4),
    ("bf16", False, "default"): Coefficients(67351552, 838.8, 0.0),
    ("bf16", True, "default"): Coefficients(78278458, 93.4, 686.5),
    ("fp32", False, "all"): Coefficients(80098304, 2424.5, 0.0),
    ("fp32", True, "all"): Coefficients(89699328, 93.4, 2403.8),
    ("bf16", False, "all"): Coefficients(80798720, 1232.5, 0.0),
    ("bf16", True, "all"): Coefficients(97480735, 93.4, 1120.2),
}

# Optimiser state and step temporaries, bytes per image pixel (fp32 vectors of 12 B/px): L-BFGS
# keeps its accepted point, that point's gradient and the direction, plus two vectors per pair
# (PAIR_BYTES); Adam two moments and a temporary. Every optimiser but ours also keeps the best
# point it evaluated (optimize.Best: one vector more); ours keeps it as its accepted point.
# "lbfgs" and a pair are measured (memmeasure.fit); the others are counted from their torch.optim
# implementations.
PAIR_BYTES = 2 * VECTOR
OPTIMIZER_BYTES = {"lbfgs": 3 * VECTOR, "lbfgs-torch": 5 * VECTOR, "adam": 4 * VECTOR, "adamw": 4 * VECTOR,
                   "sgd": 3 * VECTOR, "adagrad": 3 * VECTOR, "adadelta": 5 * VECTOR, "rmsprop": 3 * VECTOR}
DEFAULT_LAYER_SET = frozenset(DEFAULT_CONTENT_LAYERS) | frozenset(DEFAULT_STYLE_LAYERS)


def layer_set(layers: Iterable[str]) -> str:
    """``default`` when ``layers`` are among the default ones, else ``all`` (the upper bound; also
    the rough figure for other backbones' layers, which are never tiled)."""
    names = {"conv" + n[4:] if n.startswith("relu") else n for n in layers}
    return "default" if names <= DEFAULT_LAYER_SET else "all"


def state_bytes_per_pixel(optimizer: str, pixels: int) -> int:
    """The optimiser's bytes per image pixel at this size (L-BFGS: its base plus its pairs)."""
    extra = OPTIMIZER_BYTES.get(optimizer, 4 * VECTOR)
    if optimizer in ("lbfgs", "lbfgs-torch"):
        extra += PAIR_BYTES * lbfgs_history(pixels)
    return extra


def whole_image_bytes_per_pixel(pixels: int, *, precision: str = "fp32", optimizer: str = "lbfgs",
                                layers: Iterable[str] = DEFAULT_LAYER_SET) -> float:
    """Bytes per image pixel that a tiled stage keeps for the whole image (optimiser state included):
    what the main device holds beyond its own band when a stage is spread over devices."""
    kind = "bf16" if precision in ("bf16", "fp16") else "fp32"
    return TABLE[(kind, True, layer_set(layers))].per_pixel + state_bytes_per_pixel(optimizer, pixels)


def largest_window(width: int, height: int, tile: int | None, halo: int, align: int) -> tuple[int, int] | None:
    """Pixels of the largest window of the tiling and the tile count; None when it is one tile."""
    if tile is None:
        return None
    tiles = plan_tiles(width, height, tile, halo, align)
    if len(tiles) < 2:
        return None
    return max(t.window.width * t.window.height for t in tiles), len(tiles)


def estimate(width: int, height: int, tile: int | None = None, halo: int = 0, align: int = 16, *,
             precision: str = "fp32", optimizer: str = "lbfgs", layers: Iterable[str] = DEFAULT_LAYER_SET) -> int:
    """Peak bytes of one stage (``width`` x ``height``, ``tile`` px tiles or untiled) on a GPU."""
    window = largest_window(width, height, tile, halo, align)
    kind = "bf16" if precision in ("bf16", "fp16") else "fp32"
    coefficients = TABLE[(kind, window is not None, layer_set(layers))]
    pixels = width * height
    per_pixel = coefficients.per_pixel + state_bytes_per_pixel(optimizer, pixels)
    window_pixels = window[0] if window is not None else 0
    return int(math.ceil(coefficients.fixed + per_pixel * pixels + coefficients.per_window_pixel * window_pixels))


def plan_tile(width: int, height: int, halo: int, budget: int, align: int = 16, min_tile: int = 64, *,
              precision: str = "fp32", optimizer: str = "lbfgs",
              layers: Iterable[str] = DEFAULT_LAYER_SET) -> int | None:
    """The tile side to run a stage with in ``budget`` bytes; None when the whole image fits.

    Tries 2, 3, ... tiles along the long side, each the balanced side ``ceil(long / n)`` (rounded
    up to ``align``), and takes the first that fits: the fewest tiles, and among tilings with that
    count the smallest windows (less halo work than the largest side that fits would leave in
    the last tile). ``min_tile`` when nothing fits (the render's out-of-memory retry reports it).
    """
    layers = tuple(layers)
    kwargs = {"precision": precision, "optimizer": optimizer, "layers": layers}
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
