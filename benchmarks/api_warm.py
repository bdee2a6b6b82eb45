"""How much faster is a second ``stylize()`` call in the same process? (The network is kept warm.)

Usage: python benchmarks/api_warm.py [--size 48] [--iterations 5] [--pairs 3] [--device cpu] [--threads 1]
Run it in a fresh process: the first call pays what a notebook's first call pays (importing torch and
torchvision, building the network). Then ``--pairs`` times, alternately, a call with the network
kept (warm) and one after ``extractors.clear()`` (imports done, the network built again), so that
the cache's own share is a paired ratio that load on a shared machine affects alike. ``--iterations
default`` leaves the iteration caps at their defaults (the optimisation then dominates). Prints JSON:
wall-clock seconds, and this process's CPU seconds (less swayed by other processes on a shared
machine; ``--threads 1`` makes them steadier still).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=48, help="long side of the images and the result")
    parser.add_argument("--iterations", default="5", help="iterations of the one stage, or 'default'")
    parser.add_argument("--pairs", type=int, default=3, help="warm / rebuilt pairs after the first two calls")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    began = time.perf_counter()
    from hires_nst import stylize  # what a notebook does first: no torch yet

    imported = time.perf_counter() - began
    content, style = (Image.open(EXAMPLES / name).convert("RGB") for name in ("tubingen.jpg", "starry_night.jpg"))
    content.thumbnail((args.size, args.size)), style.thumbnail((args.size, args.size))
    settings: dict[str, Any] = {"max_size": args.size, "device": args.device}
    if args.iterations != "default":
        settings["iterations"] = int(args.iterations)

    def call() -> tuple[float, float]:
        """(wall, CPU) seconds of one call; the first one imports torch, so threads are set inside it."""
        start, cpu = time.perf_counter(), time.process_time()
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        stylize(content, style, **settings)
        return time.perf_counter() - start, time.process_time() - cpu

    first, second = call(), call()
    from hires_nst.model.cache import extractors  # torch is loaded by now

    warm, rebuilt = [], []
    for _ in range(args.pairs):
        warm.append(call())
        extractors.clear()
        rebuilt.append(call())
    report: dict[str, Any] = {"settings": settings, "threads": args.threads or "default",
                              "import_hires_nst_s": round(imported, 3)}
    for index, unit in enumerate(("wall", "cpu")):
        report[unit] = {
            "first_call_s": round(first[index], 3), "second_call_s": round(second[index], 3),
            "first_over_second": round(first[index] / second[index], 2),
            "warm_calls_s": [round(t[index], 3) for t in warm],
            "rebuilt_calls_s": [round(t[index], 3) for t in rebuilt],
            "rebuilt_over_warm_median": round(statistics.median(r[index] / w[index]
                                                                for r, w in zip(rebuilt, warm, strict=True)), 2)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
