"""L-BFGS unbounded vs projected onto [0, 1]: what the written (clamped) image scores.

Usage: python benchmarks/lbfgs_range.py [--size 256] [--iterations 200]

One stage of the bundled Tübingen / Starry Night pair from the content image, default weights.
"unbounded" is L-BFGS as it ran before (steps may leave [0, 1]; the output is clamped at the end);
"projected" is what ``optimize`` does now (each evaluation first clamps the image). For each: the
fp32 losses of the last iterate before clamping, of the clamped output, the share of out-of-range
pixels, and seconds. Prints one JSON line per variant.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from hires_nst.config.schedule import Stage
from hires_nst.config.settings import resolve
from hires_nst.engine.objective import Objective, make_targets
from hires_nst.engine.optimize import make_optimizer, optimize
from hires_nst.engine.plan import loss_weights
from hires_nst.engine.pyramid import stage_inputs
from hires_nst.engine.render import build_extractor
from hires_nst.io import images
from hires_nst.runtime.placement import resolve_precision

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def unbounded(start: torch.Tensor, objective: Objective, iterations: int) -> torch.Tensor:
    """The previous loop: L-BFGS steps never projected; returns the last iterate, unclamped."""
    image = start.clone().requires_grad_(True)
    opt = make_optimizer("lbfgs", image, 1.0)
    for _ in range(iterations):
        opt.step(lambda: objective(image)["total"])
    return image.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=200)
    args = parser.parse_args()
    config, device = resolve(("benchmark", {})), torch.device("cpu")
    extractor = build_extractor(config, device)
    content, style = (images.load_image(EXAMPLES / n) for n in ("tubingen.jpg", "starry_night.jpg"))
    stage = Stage(0, args.size, round(args.size * content.shape[0] / content.shape[1]), args.iterations)
    inputs = stage_inputs(content, [style], stage, config, device)
    weights = loss_weights(config)
    precision = resolve_precision("auto", (device,))
    run_objective = Objective(extractor, make_targets(extractor, inputs.content, inputs.styles, (), weights,
                                                      precision), weights, precision)
    score = Objective(extractor, make_targets(extractor, inputs.content, inputs.styles, (), weights), weights)
    for name in ("unbounded", "projected"):
        began = time.perf_counter()
        if name == "unbounded":
            last = unbounded(inputs.content, run_objective, args.iterations)
        else:
            last = optimize(inputs.content, run_objective, optimizer="lbfgs", lr=1.0, iterations=args.iterations)
        seconds = time.perf_counter() - began

        def losses(image: torch.Tensor) -> dict[str, float]:
            return {k: round(float(v), 4) for k, v in score.loss(image).items()}

        print(json.dumps({"variant": name, "size": f"{stage.width}x{stage.height}", "iterations": args.iterations,
                          "precision": precision.describe(), "last_iterate": losses(last),
                          "written": losses(last.clamp(0, 1)),
                          "out_of_range": round(float(((last < 0) | (last > 1)).float().mean()), 4),
                          "seconds": round(seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
