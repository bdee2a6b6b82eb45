"""Where print-size renders fit on GPUs, and how busy the host keeps them: modelled and fake-measured.

    python benchmarks/gpu_model.py [--sizes 2048x2048 4096x3072 4096x4096 8192x8192] [--cards 24 48 80 141]
                                   [--cuda-iterations 10]

For each stage size and card (GiB of memory; usable = the card less ~1 GiB for the CUDA context,
times the planner's margin ``placement.MEMORY_MARGIN``): the tiling the planner picks for the
default settings (bf16, L-BFGS, default layers), the model's estimated peak (``memmodel``), the
peak *fake-measured* by running the real stage on fake tensors (``memmeasure``: no GPU involved),
and the host's aten ops and device reads per iteration of the device L-BFGS (counted on the fake
run; the render adds one read per --sync-every iterations). torch's L-BFGS (``lbfgs-torch``)
cannot run on fake tensors (it reads values): its reads are 2 x history + ~5 per step
(tests/test_device_lbfgs.py counts ~123 at ~55 pairs on a CPU).

With a CUDA device it also runs each plan that fits the device for real (random weights) and
prints ``torch.cuda.max_memory_allocated`` and seconds per iteration beside the estimate.
This is a script that measures and prints, not a test.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from hires_nst.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS  # noqa: E402
from hires_nst.memmeasure import Scenario, measure  # noqa: E402
from hires_nst.memmodel import estimate, lbfgs_history, plan_tile  # noqa: E402
from hires_nst.placement import MEMORY_MARGIN  # noqa: E402
from hires_nst.tileplan import align_for, plan_tiles, required_halo  # noqa: E402

GiB = 2**30
LAYERS = (*DEFAULT_CONTENT_LAYERS, *DEFAULT_STYLE_LAYERS)
HALO, ALIGN = required_halo(LAYERS), align_for(LAYERS)
CONTEXT_GIB = 1.0  # CUDA context and cuDNN handles: not free for tensors


def budget_for(card_gib: float) -> int:
    return int((card_gib - CONTEXT_GIB) * GiB * MEMORY_MARGIN["cuda"])


def cuda_run(width: int, height: int, tile: int | None, iterations: int) -> tuple[int, float]:
    """Real peak (max_memory_allocated) and seconds per iteration of the stage on cuda:0."""
    from hires_nst.features import VGGFeatures
    from hires_nst.objective import Weights, make_targets
    from hires_nst.optimize import Stepper
    from hires_nst.placement import CHANNELS_LAST, Precision
    from hires_nst.tileplan import TileGrid
    from hires_nst.tiling import make_objective
    from hires_nst.weights import load_weights

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    weights = Weights.equal_layers(1.0, 1e3, 0.0, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS)
    precision = Precision("bf16", channels_last=CHANNELS_LAST)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    extractor = precision.prepare(VGGFeatures(load_weights("random"), LAYERS).to(device))
    shape = (1, 3, height, width)
    content, style, start = (torch.rand(shape, device=device) for _ in range(3))
    grid = TileGrid.for_layers(LAYERS, tile)
    targets = make_targets(extractor, content, [style], [], weights, precision, grid)
    objective = make_objective(extractor, targets, weights, grid.tiles(width, height), precision)
    stepper = Stepper(start, objective, "lbfgs", 1.0)
    stepper.step()  # cuDNN picks its algorithms
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(iterations):
        stepper.step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - began) / iterations
    peak = torch.cuda.max_memory_allocated(device)
    del stepper, objective, targets, extractor, content, style, start
    torch.cuda.empty_cache()
    return peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["2048x2048", "4096x3072", "4096x4096", "8192x8192"])
    parser.add_argument("--cards", nargs="+", type=float, default=[24, 48, 80, 141])
    parser.add_argument("--cuda-iterations", type=int, default=10)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    cuda = torch.cuda.is_available()
    if cuda:
        free = torch.cuda.mem_get_info()[0] / GiB
        print(f"CUDA: {torch.cuda.get_device_name()} ({free:.1f} GiB free); real runs for plans that fit it")
    print(f"bf16, L-BFGS (device), default layers; budget = (card - {CONTEXT_GIB:g} GiB) x {MEMORY_MARGIN['cuda']}")
    header = "| size | card GiB | budget GiB | pairs | plan | estimated GiB | fake-measured GiB | est/meas | ops/it | syncs/it |"
    if cuda:
        header += " CUDA max_allocated GiB | s/it |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for text in args.sizes:
        width, height = (int(v) for v in text.split("x"))
        for card in args.cards:
            budget = budget_for(card)
            tile = plan_tile(width, height, HALO, budget, ALIGN, precision="bf16", optimizer="lbfgs", layers=LAYERS)
            tiles = len(plan_tiles(width, height, tile, HALO, ALIGN)) if tile else 1
            plan = f"{tiles} x {tile} px" if tile else "untiled"
            est = estimate(width, height, tile, HALO, ALIGN, precision="bf16", optimizer="lbfgs", layers=LAYERS)
            got = measure(Scenario(width, height, tile, "bf16"))
            row = (f"| {width}x{height} | {card:g} | {budget / GiB:.1f} | {lbfgs_history(width * height)} | {plan} "
                   f"| {est / GiB:.2f} | {got.peak / GiB:.2f} | {est / got.peak:.3f} | {got.ops} | {got.syncs} |")
            if cuda:
                if est < torch.cuda.mem_get_info()[0] * 0.95:
                    real, seconds = cuda_run(width, height, tile, args.cuda_iterations)
                    row += f" {real / GiB:.2f} | {seconds:.3f} |"
                else:
                    row += " (does not fit this device) | |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
