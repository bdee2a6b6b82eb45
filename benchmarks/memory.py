"""Peak memory and time of one iteration (loss + gradient), untiled vs tiled.

    python3 benchmarks/memory.py --sizes 512 1024 2048 --tile 256 --json benchmarks/memory.json

Each configuration runs in a fresh subprocess, so one run's allocations cannot hide another's peak.
CPU: the process's resident-set peak during the iteration minus its resident set just before it
(Linux lets a process reset its peak, ``/proc/self/clear_refs``; elsewhere ``ru_maxrss`` minus the
resident set after the model was loaded). CUDA: ``torch.cuda.max_memory_allocated`` minus what was
allocated before the iteration. Targets are built outside the measured span (tiled when tiling).
This script measures and prints; it is not a test, and its JSON is not meant to be committed.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MB = 2**20


def _status_kb(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status in KiB, or None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current resident set (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS, so that the baseline is not padded with reusable memory."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def worker(size: int, aspect: float, tile: int | None, device_name: str, iterations: int) -> dict:
    """Build one configuration, run ``iterations`` objective calls and measure them."""
    import torch

    from hires_nst.config.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
    from hires_nst.core.tiles import TileGrid
    from hires_nst.engine.objective import Weights, make_targets
    from hires_nst.engine.tiling import TiledObjective, make_objective
    from hires_nst.model.features import VGGFeatures
    from hires_nst.model.weights import load_weights

    device = torch.device(device_name)
    width, height = (size, round(size / aspect)) if aspect >= 1 else (round(size * aspect), size)
    # The paper's loss, as memmodel's table (not the config's default, w2).
    weights = Weights.equal_layers(1.0, 10.0, 0.0, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, "gram")
    extractor = VGGFeatures(load_weights("original"), DEFAULT_CONTENT_LAYERS + DEFAULT_STYLE_LAYERS).to(device)
    model_rss_kb = _status_kb("VmRSS") or _maxrss_kb()
    g = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, height, width, generator=g).to(device)
    style = torch.rand(1, 3, height, width, generator=g).to(device)
    grid = TileGrid.for_layers(DEFAULT_CONTENT_LAYERS + DEFAULT_STYLE_LAYERS, tile)
    targets = make_targets(extractor, content, [style], [1.0], weights, grid=grid)
    objective = make_objective(extractor, targets, weights, grid.tiles(width, height))
    image = content.clone().requires_grad_(True)
    del style
    _release_free_memory()
    before_kb = _status_kb("VmRSS") or model_rss_kb
    exact_reset = _reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_base = torch.cuda.memory_allocated(device)
    seconds = []
    for _ in range(iterations):
        start = time.perf_counter()
        objective(image)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    peak_kb = (_status_kb("VmHWM") - before_kb) if exact_reset else (_maxrss_kb() - model_rss_kb)
    result = {
        "size": size, "width": width, "height": height, "device": str(device),
        "mode": "untiled" if tile is None else f"tile {tile}",
        "tiles": len(objective.tiles) if isinstance(objective, TiledObjective) else 1,
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "rss_method": "VmHWM reset before the iteration" if exact_reset else "ru_maxrss - RSS after model load",
        "seconds": [round(s, 3) for s in seconds],
        "seconds_per_iteration": round(min(seconds), 3),
    }
    if device.type == "cuda":
        result["cuda_peak_mb"] = round((torch.cuda.max_memory_allocated(device) - cuda_base) / MB, 1)
    return result


def available_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_one(args: argparse.Namespace, size: int, tile: int | None) -> dict:
    """One configuration in a fresh interpreter; a skip or failure comes back as a row with ``error``."""
    from hires_nst.runtime.placement import estimate_stage_bytes

    mode = "untiled" if tile is None else f"tile {tile}"
    estimate_mb = estimate_stage_bytes(size, size) / MB if tile is None else 0.0
    free = available_mb()
    if args.device == "cpu" and free is not None and estimate_mb * 1.25 > free:
        return {"size": size, "mode": mode, "error": f"skipped: needs ~{estimate_mb:.0f} MB, {free:.0f} MB available"}
    command = [sys.executable, __file__, "--worker", "--sizes", str(size), "--aspect", str(args.aspect),
               "--device", args.device, "--iterations", str(args.iterations), "--tile", str(tile or 0)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"size": size, "mode": mode, "error": f"timed out after {args.timeout} s"}
    if done.returncode != 0:
        return {"size": size, "mode": mode, "error": (done.stderr.strip().splitlines() or ["?"])[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def with_ratios(rows: list[dict]) -> list[dict]:
    """Add tiled/untiled time and memory ratios to each tiled row whose untiled partner succeeded."""
    untiled = {r["size"]: r for r in rows if r["mode"] == "untiled" and "error" not in r}
    for row in rows:
        base = untiled.get(row["size"])
        if row["mode"] != "untiled" and base is not None and "error" not in row:
            row["time_ratio"] = round(row["seconds_per_iteration"] / base["seconds_per_iteration"], 2)
            row["memory_ratio"] = round(row["peak_rss_mb"] / max(base["peak_rss_mb"], 1e-9), 3)
    return rows


def table(rows: list[dict]) -> str:
    head = (f"{'size':>11} {'mode':>9} {'tiles':>5} {'peak RSS MB':>11} {'CUDA MB':>8} {'s/iter':>8} "
            f"{'t ratio':>7} {'m ratio':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = f"{r.get('width', r['size'])}x{r.get('height', '')}".rstrip("x")
        if "error" in r:
            lines.append(f"{shape:>11} {r['mode']:>9}  {r['error']}")
            continue
        lines.append(f"{shape:>11} {r['mode']:>9} {r['tiles']:>5} {r['peak_rss_mb']:>11.1f} "
                     f"{r.get('cuda_peak_mb', '-'):>8} {r['seconds_per_iteration']:>8.2f} "
                     f"{r.get('time_ratio', '-'):>7} {r.get('memory_ratio', '-'):>7}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048], help="long sides to measure")
    parser.add_argument("--tile", type=int, default=256, help="tile size of the tiled runs (0: untiled only)")
    parser.add_argument("--aspect", type=float, default=1.0, help="width / height (1 = square, 1.333 = 4:3)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--iterations", type=int, default=1, help="objective calls to time (the fastest is kept)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds allowed per configuration")
    parser.add_argument("--skip-untiled-above", type=int, default=0, help="no untiled run above this size (0: none)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "memory.json", help="where to write results")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        print(json.dumps(worker(args.sizes[0], args.aspect, args.tile or None, args.device, args.iterations)))
        return
    rows = []
    for size in args.sizes:
        for tile in dict.fromkeys((None, args.tile or None)):
            if tile is None and args.skip_untiled_above and size > args.skip_untiled_above:
                rows.append({"size": size, "mode": "untiled", "error": "skipped (--skip-untiled-above)"})
                continue
            row = run_one(args, size, tile)
            rows.append(row)
            done = row.get("error") or f"{row['peak_rss_mb']} MB, {row['seconds_per_iteration']} s"
            print(f"{size} {row['mode']}: {done}", file=sys.stderr, flush=True)
    rows = with_ratios(rows)
    print(table(rows))
    args.json.write_text(json.dumps({"device": args.device, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
