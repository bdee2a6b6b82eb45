"""One render over several ranks: measured seconds per iteration, bytes exchanged, and a scaling model.

    python3 benchmarks/distributed.py                          # CPU: 1 rank x 2 threads vs 2 ranks x 1 thread
    python3 benchmarks/distributed.py --sizes 512 --iterations 2
    python3 benchmarks/distributed.py --gpus 1,2,4,8 --cuda-sizes 2048,4096   # on a multi-GPU machine

Sections (a table each on stdout, all of them in ``--json``):

* ``cpu``: one stage's evaluation (loss + gradient, default layers and precision, untiled bands)
  on one rank with every core's threads, against one rank per core (gloo on localhost) with one
  thread each; seconds per iteration (fastest of ``--iterations`` after one warm-up) and the bytes
  each rank sends and receives per iteration: the packed pass-1 buffer (all-reduced) and the
  bands' gradients (all-gathered).
* ``cuda`` (when CUDA is here): the same on 1, 2, 4, 8 GPUs at 2048 and 4096 px, with the
  scaling efficiency ``t1 / (n * tn)``.
* ``calibration``: what ``bandplan.calibrate`` measured on the ranks (window fixed cost, seconds
  per window pixel, link latency and bandwidth); the render makes its spreading decisions from
  these.
* ``model``: seconds per iteration and efficiency for 1-8 GPUs in one node and 2 nodes x 8 GPUs
  over 100 Gb/s, from the cost model of ``bandplan`` (max over ranks of the band's window time,
  plus the two exchanges). Its GPU inputs are measured when CUDA is here (``cuda`` section) and
  otherwise ASSUMED, and printed as such: ``--gpu-tflops`` achieved (default 400, about 40% of an
  H100's dense bf16 peak), ``--window-ms`` fixed host cost per window (default 2 ms: ~350
  dispatched ops, hidden behind the GPU's work when the window takes longer, as CUDA launches are
  asynchronous), ``--nvlink-gbs`` all-gather bandwidth per GPU (default 370 GB/s, nccl-tests
  figures for 8 x H100 SXM), ``--network-gbit`` between nodes (default 100).

A benchmark, not a test. Timings on a shared machine are contended: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's package, not an installed one

import torch  # noqa: E402

from hires_nst.config.settings import RenderConfig  # noqa: E402
from hires_nst.core.bands import BandPlan, plan_bands  # noqa: E402
from hires_nst.core.tiles import align_for, required_halo  # noqa: E402
from hires_nst.engine.bandplan import Costs, Line, calibrate, spread_seconds  # noqa: E402
from hires_nst.engine.distributed import BandObjective  # noqa: E402
from hires_nst.engine.objective import Objective, make_targets  # noqa: E402
from hires_nst.engine.plan import loss_weights  # noqa: E402
from hires_nst.engine.render import build_extractor  # noqa: E402
from hires_nst.runtime import ranks  # noqa: E402
from hires_nst.runtime.placement import place, resolve_precision  # noqa: E402

MB = 2**20
FLOP_PER_PIXEL = 1.45e6  # VGG19 to conv5_1, forward + backward to the input (DESIGN.md 5)
FORWARD_SHARE = 1 / 3  # forward of the forward + backward (frozen weights: backward ~2x forward)
CONFIG = RenderConfig()
LAYERS = [*CONFIG.loss.content_layers, *CONFIG.loss.style_layers]
HALO, ALIGN = required_halo(LAYERS), align_for(LAYERS)


def problem(size: int, device: torch.device, precision_name: str):
    """The default objective's pieces at ``size`` px on ``device``: random content, style and start."""
    precision = resolve_precision(precision_name, [device])
    placement = place(build_extractor(CONFIG, device), [device], precision)
    weights = loss_weights(CONFIG)
    g = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, size, size, generator=g).to(device)
    style = torch.rand(1, 3, size, size, generator=g).to(device)
    targets = make_targets(placement.extractor, content, [style], [1.0], weights, precision)
    image = (0.5 * content + 0.5 * torch.rand(1, 3, size, size, generator=g).to(device)).clamp(0, 1)
    return placement, weights, targets, image


def _timed(objective, image: torch.Tensor, iterations: int, device: torch.device) -> float:
    best = float("inf")
    for _ in range(iterations + 1):  # the first call warms up
        leaf = image.clone().requires_grad_(True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        objective(leaf)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - began)
    return best


def one_rank(size: int, device: torch.device, precision: str, iterations: int) -> dict:
    placement, weights, targets, image = problem(size, device, precision)
    objective = Objective(placement.extractor, targets, weights, placement.precision)
    return {"ranks": 1, "threads": torch.get_num_threads(), "size": size,
            "s_per_it": round(_timed(objective, image, iterations, device), 3), "received_mb": 0.0}


def on_ranks(world: ranks.World, size: int, precision: str, iterations: int, calibrating: bool) -> dict:
    """Rank side: the band objective's seconds per iteration (slowest rank), its bytes, the calibration."""
    placement, weights, targets, image = problem(size, world.device, precision)
    bands = plan_bands(size, size, world.size, HALO, ALIGN)
    objective = BandObjective(world, placement.extractor, targets, weights, BandPlan(tuple(bands), None, HALO, ALIGN),
                              size, size, placement.precision)
    seconds = _timed(objective, image, iterations, world.device)
    slowest = max(r[0] for r in ranks.gather_floats(world, [seconds]))
    padded = objective.padded[0] * objective.padded[1] * 3 * 4
    stats = 4 * sum(c * c for c in objective.channels.values()) + 4 * len(objective.local.content_layers)
    ring = 2 * (world.size - 1) / world.size  # bytes a ring all-reduce sends (and receives) per payload byte
    row = {"ranks": world.size, "threads": torch.get_num_threads(), "size": size, "s_per_it": round(slowest, 3),
           "stats_mb": round(stats / MB, 2),
           "received_mb": round((ring * stats + (world.size - 1) * padded) / MB, 1),
           "bands": f"{len(bands)}: " + ", ".join(f"{b.bounds.width}x{b.bounds.height}" for b in bands[:2])}
    if calibrating:
        row["calibration"] = calibrate(world, placement, list(objective.local.style_layers)).as_floats()
    return row


def cpu_section(args: argparse.Namespace) -> tuple[list[dict], Costs | None]:
    rows, costs = [], None
    cores = os.cpu_count() or 1
    for size in args.sizes:
        torch.set_num_threads(cores)
        rows.append(one_rank(size, torch.device("cpu"), args.precision, args.iterations))
        row = ranks.launch(on_ranks, [torch.device("cpu")] * cores,
                           (size, args.precision, args.iterations, costs is None),
                           (size, args.precision, args.iterations, costs is None))
        if "calibration" in row:
            costs = Costs.from_floats(row.pop("calibration"))
        rows.append(row)
        rows[-1]["speedup"] = round(rows[-2]["s_per_it"] / row["s_per_it"], 2)
    return rows, costs


def cuda_section(args: argparse.Namespace) -> tuple[list[dict], Costs | None]:
    rows, costs = [], None
    count = torch.cuda.device_count()
    for size in args.cuda_sizes:
        base = None
        for n in [g for g in args.gpus if g <= count]:
            devices = [torch.device("cuda", i) for i in range(n)]
            if n == 1:
                row = one_rank(size, devices[0], args.precision, args.iterations)
            else:
                row = ranks.launch(on_ranks, devices, (size, args.precision, args.iterations, costs is None),
                                   (size, args.precision, args.iterations, costs is None))
                if "calibration" in row:
                    costs = Costs.from_floats(row.pop("calibration"))
            base = base or row["s_per_it"]
            row["efficiency"] = round(base / (n * row["s_per_it"]), 3)
            rows.append(row)
    return rows, costs


# --------------------------------------------------------------------------- the model


def assumed_gpu(args: argparse.Namespace) -> Costs:
    """GPU costs when none was measured: the FLOP count at an achieved rate (ASSUMED, printed)."""
    per_pixel = FLOP_PER_PIXEL / (args.gpu_tflops * 1e12)
    link = Line(20e-6, 1 / (args.nvlink_gbs * 1e9))
    return Costs(Line(0.0, per_pixel * FORWARD_SHARE), Line(0.0, per_pixel), link, 2_400_000)


def modelled(costs: Costs, size: int, nodes: int, per_node: int, window_s: float, network_gbit: float) -> float:
    """Seconds per iteration on ``nodes`` x ``per_node`` GPUs, one window per band.

    Within a node, ``bandplan.spread_seconds`` (max band window time + ring all-reduce of the Gram
    sums + all-gather of the bands' gradients at the NVLink rate). Across nodes, each node must also
    receive the other nodes' gradients once over its network link (NCCL forwards them over NVLink).
    The window's fixed host cost counts only where it exceeds the GPU time it overlaps.
    """
    n = nodes * per_node
    bands = plan_bands(size, size, n, HALO, ALIGN)
    if n == 1:
        compute = costs.both(size * size)
        return max(compute, window_s)
    seconds = spread_seconds(costs, size, size, bands, [None] * len(bands), HALO, ALIGN, n)
    compute = max(costs.both(b.window_pixels) for b in bands)
    seconds += max(0.0, window_s - compute)
    if nodes > 1:
        padded = max(b.bounds.height for b in bands) * max(b.bounds.width for b in bands) * 3 * 4
        seconds += (nodes - 1) * per_node * padded / (network_gbit * 1e9 / 8) + 50e-6
    return seconds


def model_section(args: argparse.Namespace, gpu: Costs | None) -> list[dict]:
    source = "measured" if gpu is not None else "ASSUMED"
    costs = gpu or assumed_gpu(args)
    window = args.window_ms / 1000
    rows = []
    for size in args.model_sizes:
        base = modelled(costs, size, 1, 1, window, args.network_gbit)
        for nodes, per_node in ((1, 1), (1, 2), (1, 4), (1, 8), (2, 8)):
            seconds = modelled(costs, size, nodes, per_node, window, args.network_gbit)
            n = nodes * per_node
            bands = plan_bands(size, size, n, HALO, ALIGN)
            useful = size * size / len(bands) / max(b.window_pixels for b in bands)
            rows.append({"gpus": f"{nodes}x{per_node}", "size": size, "gpu_costs": source,
                         "ms_per_it": round(seconds * 1e3, 2), "speedup": round(base / seconds, 2),
                         "efficiency": round(base / (n * seconds), 3), "halo_bound": round(useful, 3)})
    return rows


# --------------------------------------------------------------------------- output


def table(title: str, rows: list[dict], keys: list[str]) -> str:
    if not rows:
        return ""
    widths = {k: max(len(k), *(len(str(r.get(k, "-"))) for r in rows)) for k in keys}
    lines = [f"\n{title}", "  ".join(k.rjust(widths[k]) for k in keys)]
    lines += ["  ".join(str(r.get(k, "-")).rjust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


def describe(costs: Costs | None, label: str) -> dict:
    if costs is None:
        return {}
    return {"where": label, "window_fixed_ms": round(costs.both.fixed * 1e3, 2),
            "us_per_kpx_fwd_bwd": round(costs.both.per_unit * 1e9, 2),
            "us_per_kpx_fwd": round(costs.forward.per_unit * 1e9, 2),
            "link_latency_ms": round(costs.link.fixed * 1e3, 3),
            "link_gb_s": round(1 / costs.link.per_unit / 1e9, 2) if costs.link.per_unit else None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ints = lambda text: [int(v) for v in text.split(",") if v]  # noqa: E731
    parser.add_argument("--sizes", type=ints, default=[512, 1024], help="CPU stage sides")
    parser.add_argument("--cuda-sizes", type=ints, default=[2048, 4096], help="CUDA stage sides")
    parser.add_argument("--gpus", type=ints, default=[1, 2, 4, 8], help="GPU counts to measure")
    parser.add_argument("--model-sizes", type=ints, default=[2048, 4096, 8192], help="sides of the model rows")
    parser.add_argument("--precision", default="auto", help="auto, fp32, bf16 (fp16 on CUDA)")
    parser.add_argument("--iterations", type=int, default=3, help="timed evaluations (fastest kept)")
    parser.add_argument("--gpu-tflops", type=float, default=400.0, help="ASSUMED achieved TFLOP/s when no GPU")
    parser.add_argument("--window-ms", type=float, default=2.0, help="ASSUMED host ms per window when no GPU")
    parser.add_argument("--nvlink-gbs", type=float, default=370.0, help="ASSUMED all-gather GB/s per GPU")
    parser.add_argument("--network-gbit", type=float, default=100.0, help="between nodes, Gbit/s")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU measurement")
    parser.add_argument("--json", type=Path, help="write every row here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    lscpu = platform.processor() or "cpu"
    print(f"hires-nst distributed benchmark; torch {torch.__version__}; {os.cpu_count()} CPU cores ({lscpu}); "
          f"CUDA devices: {torch.cuda.device_count() if torch.cuda.is_available() else 0}")
    cpu_rows, cpu_costs = ([], None) if args.no_cpu else cpu_section(args)
    cuda_rows, gpu_costs = cuda_section(args) if torch.cuda.is_available() else ([], None)
    model_rows = model_section(args, gpu_costs)
    calibration = [d for d in (describe(cpu_costs, "cpu ranks (gloo)"), describe(gpu_costs, "cuda ranks (nccl)")) if d]
    print(table("cpu: one stage evaluation, 1 rank x all threads vs 1 rank per core x 1 thread (measured)", cpu_rows,
                ["ranks", "threads", "size", "s_per_it", "speedup", "stats_mb", "received_mb", "bands"]))
    print(table("cuda: 1/2/4/8 GPUs (measured)", cuda_rows, ["ranks", "size", "s_per_it", "efficiency", "received_mb"]))
    print(table("calibration (measured by bandplan.calibrate on the ranks)", calibration,
                ["where", "window_fixed_ms", "us_per_kpx_fwd_bwd", "us_per_kpx_fwd", "link_latency_ms", "link_gb_s"]))
    if gpu_costs is None:
        print(f"\nmodel inputs ASSUMED (no GPU here): {args.gpu_tflops:g} TFLOP/s achieved, {args.window_ms:g} ms "
              f"host per window, {args.nvlink_gbs:g} GB/s all-gather per GPU, {args.network_gbit:g} Gbit/s "
              "between nodes")
    print(table("model: seconds per iteration, one window per band (modelled, not measured)", model_rows,
                ["gpus", "size", "gpu_costs", "ms_per_it", "speedup", "efficiency", "halo_bound"]))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_rows, "cuda": cuda_rows, "calibration": calibration,
                                         "model": model_rows}, indent=2))


if __name__ == "__main__":
    main()
