"""What photo mode costs (issue 24): the same 2048 px render in painting and photo mode, paired.

Usage: python benchmarks/photo_cost.py [--content ../shared/images/tubingen.jpg]
           [--style ../shared/images/hoovertowernight.jpg] [--max-size 2048] [--iterations 4,3,2,2,2]
           [--out /tmp/photo-cost] [--skip-renders]

1. Two renders with the same small fixed iteration caps (a full render is ~40 minutes on the dev
   CPU; the regulariser's cost is per evaluation, so the ratio carries to full iteration counts),
   painting first, then ``--photo``; prints each one's seconds, evaluations and the ratio.
2. Per evaluation at the last stage's size: the regulariser's value and gradient
   (``matting.quadratic_and_gradient``, the per-stage guide once) against one loss-and-gradient
   evaluation of the network (the stage's objective as the render cuts it), each the median of a
   few runs, and their ratio.

Timings are whatever this machine gives: name its CPU (and its load) when quoting them.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import torch

from hires_nst.config.schedule import fit_long_side
from hires_nst.config.settings import resolve
from hires_nst.core import matting
from hires_nst.engine.objective import make_targets
from hires_nst.engine.plan import loss_weights, tiling_rules
from hires_nst.engine.render import RenderJob, make_placement, render
from hires_nst.engine.tiling import make_objective
from hires_nst.events import StageFinished, Step
from hires_nst.io import images
from hires_nst.runtime import ranks

SHARED = Path(__file__).resolve().parents[2] / "shared" / "images"


def timed_render(content: Path, style: Path, out: Path, settings: dict) -> tuple[float, int, list[float]]:
    """Seconds, evaluations (steps reported) and per-stage seconds of one render."""
    config = resolve(("benchmark", settings))
    steps: list[Step] = []
    stages: list[float] = []

    def sink(event: object) -> None:
        if isinstance(event, Step):
            steps.append(event)
        elif isinstance(event, StageFinished):
            stages.append(event.seconds)

    began = time.perf_counter()
    render(RenderJob(content, (style,), out, config), sink)
    return time.perf_counter() - began, len(steps), stages


def median_seconds(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def per_evaluation(content: Path, style: Path, max_size: int, repeats: int) -> None:
    """The regulariser's value and gradient against one network evaluation, at ``max_size``."""
    config = resolve(("benchmark", {"loss": {"photo": True}, "pyramid": {"max_size": max_size}}))
    photo = images.load_image(content)
    width, height = fit_long_side(photo.shape[1], photo.shape[0], max_size)
    placement = make_placement(config, ranks.single(torch.device("cpu")))
    image = images.to_tensor(images.resize(photo, width, height))
    painting = images.to_tensor(images.resize(images.load_image(style), *fit_long_side(
        *images.load_image(style).shape[1::-1], max_size)))
    began = time.perf_counter()
    guide = matting.matting_guide(image)
    print(f"guide at {width}x{height}: {time.perf_counter() - began:.2f} s (once per stage)")
    regulariser = median_seconds(lambda: matting.quadratic_and_gradient(guide, image), repeats)
    from hires_nst.config.schedule import Stage

    stage = Stage(0, width, height, 1)
    plan = tiling_rules(config, placement).plan(stage)
    weights = loss_weights(config)
    targets = make_targets(placement.extractor, image, [painting], [], weights, placement.precision, plan.grid)
    objective = make_objective(placement.extractor, targets, weights, plan.tiles, placement.precision)
    network = median_seconds(lambda: objective(image.clone()), max(1, repeats // 2))
    print(f"per evaluation at {width}x{height} ({len(plan.tiles)} window(s)): regulariser {regulariser:.2f} s, "
          f"whole photo-mode evaluation {network:.2f} s: the regulariser is {regulariser / network:.1%} of it")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--content", default=str(SHARED / "tubingen.jpg"))
    parser.add_argument("--style", default=str(SHARED / "hoovertowernight.jpg"))
    parser.add_argument("--max-size", type=int, default=2048)
    parser.add_argument("--iterations", default="4,3,2,2,2")
    parser.add_argument("--out", default="/tmp/photo-cost")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-renders", action="store_true")
    args = parser.parse_args()
    content, style, out = Path(args.content), Path(args.style), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    iterations = [int(n) for n in args.iterations.split(",")]
    if not args.skip_renders:
        seconds = {}
        for mode, loss in (("painting", {}), ("photo", {"photo": True})):
            shutil.rmtree(out / f"work-{mode}", ignore_errors=True)  # never resume an earlier run
            settings = {"pyramid": {"max_size": args.max_size, "iterations": iterations}, "loss": loss,
                        "optim": {"tolerance": 0.0}, "output": {"work_dir": str(out / f"work-{mode}")}}
            total, steps, stages = timed_render(content, style, out / f"{mode}.png", settings)
            seconds[mode] = total
            print(f"{mode}: {total:.1f} s, {steps} iterations reported, stages "
                  + ", ".join(f"{s:.1f}" for s in stages) + " s", flush=True)
        print(f"photo / painting: {seconds['photo'] / seconds['painting']:.3f}", flush=True)
    per_evaluation(content, style, args.max_size, args.repeats)


if __name__ == "__main__":
    main()
