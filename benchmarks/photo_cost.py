"""What photo mode costs (issue 24): the same 2048 px render in painting and photo mode, paired.

Usage: python benchmarks/photo_cost.py [--content ../shared/images/tubingen.jpg]
           [--style ../shared/images/hoovertowernight.jpg] [--max-size 2048] [--iterations 4,3,2,2,2]
           [--out /tmp/photo-cost] [--repeats 3] [--skip-renders]

1. Renders with the same small fixed iteration caps (a full render is ~40 minutes on the dev CPU;
   the regulariser's cost is per evaluation, so the ratio carries to full iteration counts), in
   the order painting, photo, photo, painting (ABBA: a machine whose load drifts during the run
   weighs on both modes alike); prints each one's seconds and the ratio of the sums.
2. Per evaluation at the last stage's size, interleaved: one loss-and-gradient evaluation of the
   stage's objective in painting mode, then in photo mode, ``--repeats`` times (medians and the
   median of the paired ratios); and the regulariser alone (``matting.quadratic_and_gradient``)
   and its per-stage guide.

Timings are whatever this machine gives: name its CPU (and its load) when quoting them.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import statistics
import time
from pathlib import Path

import torch

from hires_nst.config.schedule import Stage, fit_long_side
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
    """Painting-mode and photo-mode evaluations of the stage objective at ``max_size``, interleaved;
    the regulariser alone."""
    config = resolve(("benchmark", {"loss": {"photo": True}, "pyramid": {"max_size": max_size}}))
    photo = images.load_image(content)
    width, height = fit_long_side(photo.shape[1], photo.shape[0], max_size)
    placement = make_placement(config, ranks.single(torch.device("cpu")))
    image = images.to_tensor(images.resize(photo, width, height))
    painting = images.load_image(style)
    painting_t = images.to_tensor(images.resize(painting, *fit_long_side(painting.shape[1], painting.shape[0],
                                                                         max_size)))
    began = time.perf_counter()
    guide = matting.matting_guide(image)
    print(f"guide at {width}x{height}: {time.perf_counter() - began:.2f} s (once per stage)")
    regulariser = median_seconds(lambda: matting.quadratic_and_gradient(guide, image), repeats)
    plan = tiling_rules(config, placement).plan(Stage(0, width, height, 1))
    objectives = {}
    for mode, weight in (("painting", 0.0), ("photo", loss_weights(config).photo)):
        weights = dataclasses.replace(loss_weights(config), photo=weight)
        targets = make_targets(placement.extractor, image, [painting_t], [], weights, placement.precision, plan.grid)
        objectives[mode] = make_objective(placement.extractor, targets, weights, plan.tiles, placement.precision)
    seconds: dict[str, list[float]] = {"painting": [], "photo": []}
    for _ in range(repeats):
        for mode, objective in objectives.items():
            began = time.perf_counter()
            objective(image.clone())
            seconds[mode].append(time.perf_counter() - began)
    ratios = [b / a for a, b in zip(seconds["painting"], seconds["photo"], strict=True)]
    print(f"per evaluation at {width}x{height} ({len(plan.tiles)} window(s)), {repeats} interleaved pairs: painting "
          f"{statistics.median(seconds['painting']):.2f} s, photo {statistics.median(seconds['photo']):.2f} s, "
          f"photo / painting {statistics.median(ratios):.3f} (pairs: {', '.join(f'{r:.3f}' for r in ratios)}); "
          f"the regulariser alone {regulariser:.2f} s")


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
        seconds = {"painting": 0.0, "photo": 0.0}
        for run, mode in enumerate(("painting", "photo", "photo", "painting")):
            loss = {"photo": True} if mode == "photo" else {}
            work = out / f"work-{run}"
            shutil.rmtree(work, ignore_errors=True)  # never resume an earlier run
            settings = {"pyramid": {"max_size": args.max_size, "iterations": iterations}, "loss": loss,
                        "optim": {"tolerance": 0.0}, "output": {"work_dir": str(work)}}
            total, steps, stages = timed_render(content, style, out / f"{mode}-{run}.png", settings)
            seconds[mode] += total
            print(f"{mode}: {total:.1f} s, {steps} iterations reported, stages "
                  + ", ".join(f"{s:.1f}" for s in stages) + " s", flush=True)
        print(f"photo / painting (ABBA sums): {seconds['photo'] / seconds['painting']:.3f}", flush=True)
    per_evaluation(content, style, args.max_size, args.repeats)


if __name__ == "__main__":
    main()
