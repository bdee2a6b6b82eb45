"""Where print-size renders fit on GPUs, and how busy the host keeps them: modelled and fake-measured.

    python benchmarks/gpu_model.py [--sizes 2048x2048 4096x3072 4096x4096 8192x8192] [--cards 24 48 80 141]
                                   [--loss default|gatys] [--average 0.9] [--regions 2] [--cuda-iterations 10]

For each stage size and card (GiB of memory; usable = the card less ~1 GiB for the CUDA context,
times the planner's margin ``placement.MEMORY_MARGIN``): the tiling the planner picks for the
settings (bf16, L-BFGS, default layers; the render's default loss, w2 with descending layer
weights, or ``--loss gatys``, the preset's Gram loss; ``--average`` iterate averaging,
``--regions`` styled regions with their guides), the model's estimated peak (``memmodel``), the
peak *fake-measured* by running the real stage on fake tensors (``memmeasure``: no GPU involved),
and the host's aten ops and device reads per iteration of the device L-BFGS (counted on the fake
run; the render adds one read per --sync-every iterations). torch's L-BFGS (``lbfgs-torch``)
cannot run on fake tensors (it reads values): its reads are 2 x history + ~5 per step
(tests/core/test_lbfgs.py counts ~123 at ~55 pairs on a CPU).

With a CUDA device it also runs each plan that fits the device for real (random weights) and
prints ``torch.cuda.max_memory_allocated`` and seconds per iteration beside the estimate
(``benchmarks/gpu_check.py`` is the one-command check of a GPU).
This is a script that measures and prints, not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from hires_nst.core.memmodel import lbfgs_history, plan_tile  # noqa: E402
from hires_nst.core.tiles import align_for, plan_tiles, required_halo  # noqa: E402
from hires_nst.engine.memmeasure import Scenario, build_stage, estimated, measure, model_settings  # noqa: E402
from hires_nst.runtime.placement import MEMORY_MARGIN  # noqa: E402

GiB = 2**30
CONTEXT_GIB = 1.0  # CUDA context and cuDNN handles: not free for tensors


def budget_for(card_gib: float) -> int:
    return int((card_gib - CONTEXT_GIB) * GiB * MEMORY_MARGIN["cuda"])


def cuda_run(scenario: Scenario, iterations: int) -> tuple[int, float]:
    """Real peak (max_memory_allocated) and seconds per iteration of the stage on cuda:0."""
    from hires_nst.model.features import VGGFeatures
    from hires_nst.model.weights import load_weights
    from hires_nst.runtime.placement import CHANNELS_LAST, Precision

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    precision = Precision(scenario.precision, channels_last=CHANNELS_LAST)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    layers = [*scenario.layers[0], *scenario.layers[1]]
    extractor = precision.prepare(VGGFeatures(load_weights("random"), layers).to(device))
    stage = build_stage(scenario, extractor, precision, device)
    stage.stepper.step()  # cuDNN picks its algorithms
    torch.cuda.synchronize()
    began = time.perf_counter()
    for _ in range(iterations):
        stage.stepper.step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - began) / iterations
    peak = torch.cuda.max_memory_allocated(device) - base
    del stage, extractor
    torch.cuda.empty_cache()
    return peak, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["2048x2048", "4096x3072", "4096x4096", "8192x8192"])
    parser.add_argument("--cards", nargs="+", type=float, default=[24, 48, 80, 141])
    parser.add_argument("--loss", default="default", help="default (the render's: w2, descending weights) or a "
                        "preset's, e.g. gatys (Gram, equal weights)")
    parser.add_argument("--average", type=float, default=0.0, help="--average-iterates decay (0: none)")
    parser.add_argument("--regions", type=int, default=0, help="styled regions with guides (0: none)")
    parser.add_argument("--cuda-iterations", type=int, default=10)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    cuda = torch.cuda.is_available()
    if cuda:
        free = torch.cuda.mem_get_info()[0] / GiB
        print(f"CUDA: {torch.cuda.get_device_name()} ({free:.1f} GiB free); real runs for plans that fit it")
    settings = f"loss {args.loss}" + (f", averaging {args.average:g}" if args.average else "") + (
        f", {args.regions} regions" if args.regions else "")
    print(f"bf16, L-BFGS (device), default layers, {settings}; budget = (card - {CONTEXT_GIB:g} GiB) x "
          f"{MEMORY_MARGIN['cuda']}")
    header = ("| size | card GiB | budget GiB | pairs | plan | estimated GiB | fake-measured GiB | est/meas "
              "| ops/it | syncs/it |")
    if cuda:
        header += " CUDA max_allocated GiB | s/it |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for text in args.sizes:
        width, height = (int(v) for v in text.split("x"))
        for card in args.cards:
            print(row(width, height, card, args, cuda), flush=True)


def row(width: int, height: int, card: float, args: argparse.Namespace, cuda: bool) -> str:
    """One size on one card: the planner's tiling, the model, the fake measurement (and the GPU's)."""
    untiled = Scenario(width, height, None, "bf16", loss=args.loss, average=args.average, regions=args.regions)
    model = model_settings(untiled)
    halo, align = required_halo(model["layers"]), align_for(model["layers"])
    tile = plan_tile(width, height, halo, budget_for(card), align, **model)
    scenario = dataclasses.replace(untiled, tile=tile)
    tiles = len(plan_tiles(width, height, tile, halo, align)) if tile else 1
    plan = f"{tiles} x {tile} px" if tile else "untiled"
    est, got = estimated(scenario), measure(scenario)
    text = (f"| {width}x{height} | {card:g} | {budget_for(card) / GiB:.1f} | {lbfgs_history(width * height)} "
            f"| {plan} | {est / GiB:.2f} | {got.peak / GiB:.2f} | {est / got.peak:.3f} | {got.ops} | {got.syncs} |")
    if not cuda:
        return text
    if est >= torch.cuda.mem_get_info()[0] * 0.95:
        return text + " (does not fit this device) | |"
    real, seconds = cuda_run(scenario, args.cuda_iterations)
    return text + f" {real / GiB:.2f} | {seconds:.3f} |"


if __name__ == "__main__":
    main()
