"""Does carrying Adam's moments across pyramid stages help? Measures both ways on the shared pair.

Usage: python benchmarks/adam_warm_start.py [--sizes 64,256] [--iterations 60,30,15]
Prints, for each setting, the total loss at the first iterations of every later stage and the
final loss of the last stage (lower is better), as JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from hires_nst.config.settings import resolve
from hires_nst.engine.render import RenderJob, render
from hires_nst.events import StageFinished, Step

SHARED = Path(__file__).resolve().parents[2] / "shared" / "images"


def run(warm_start: bool, min_size: int, max_size: int, iterations: list[int], workdir: Path) -> dict:
    config = resolve(("benchmark", {"optim": {"optimizer": "adam", "warm_start": warm_start},
                                    "pyramid": {"min_size": min_size, "max_size": max_size, "iterations": iterations},
                                    "output": {"work_dir": str(workdir)}}))
    steps: dict[int, list[float]] = {}
    finals: list[float] = []

    def sink(event) -> None:
        if isinstance(event, Step):
            steps.setdefault(event.stage, []).append(event.losses["total"])
        elif isinstance(event, StageFinished):
            finals.append(event.losses["total"])

    began = time.perf_counter()
    render(RenderJob(SHARED / "tubingen.jpg", (SHARED / "starry_night.jpg",), workdir / "out.png", config), sink)
    return {"warm_start": warm_start, "seconds": round(time.perf_counter() - began, 1),
            "first_5_losses_per_later_stage": {s: [round(v, 4) for v in losses[:5]]
                                               for s, losses in steps.items() if s},
            "final_loss_per_stage": [round(v, 4) for v in finals]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,256", help="min,max long side")
    parser.add_argument("--iterations", default="60,30,15")
    args = parser.parse_args()
    min_size, max_size = (int(v) for v in args.sizes.split(","))
    iterations = [int(v) for v in args.iterations.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(flag, min_size, max_size, iterations, Path(tmp) / str(flag)) for flag in (False, True)]
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
