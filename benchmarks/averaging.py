"""What --average-iterates does to the written image: losses and high-frequency noise, last iterate vs averages.

Usage: python benchmarks/averaging.py [--size 128] [--iterations 100] [--decays 0.9,0.95,0.99]
                                      [--optimizers lbfgs,adam] [--pairs tubingen/starry,hoover/scream]
                                      [--out /tmp/hires-nst-averaging]

For each pair (the bundled Tubingen / Starry Night, and ../shared/images Hoover Tower by night /
The Scream) and each optimiser, ONE single-stage optimisation at --size px from the content image,
default settings otherwise. The average never feeds back into the iterates, so one run gives every
decay: beside the renderer's own stepper, one ``IterateAverage`` per decay is updated after each
step exactly as ``--average-iterates`` does, and each average is what a one-stage render with that
decay would write. Printed per image: the project's losses (total, content, style; the objective
the render optimises), and two measures of high-frequency noise of the image in [0, 1]: the mean
squared 4-neighbour Laplacian and the total variation (tv_loss), both x1000, with the content
photo's own values for scale. An average lags behind the iterates (by ``mean_age`` steps), towards
the smoother start: each average is also compared with the iterate of the same age. The images
go to --out (PNG) to look at.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from hires_nst.config.schedule import Stage, fit_long_side
from hires_nst.config.settings import resolve
from hires_nst.core.averaging import IterateAverage
from hires_nst.core.losses import tv_loss
from hires_nst.engine.objective import Objective, make_targets
from hires_nst.engine.optimize import Stepper
from hires_nst.engine.plan import loss_weights
from hires_nst.engine.pyramid import style_size
from hires_nst.engine.render import build_extractor
from hires_nst.io import images
from hires_nst.runtime.placement import resolve_precision

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "images"
PAIRS = {"tubingen/starry": (ROOT / "examples" / "tubingen.jpg", ROOT / "examples" / "starry_night.jpg"),
         "hoover/scream": (SHARED / "hoovertowernight.jpg", SHARED / "the_scream.jpg")}
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).expand(3, 1, 3, 3)


def laplacian_energy(image: Tensor) -> float:
    """Mean squared discrete Laplacian over the interior pixels: large for pixel-scale jitter."""
    return float(F.conv2d(image.float(), LAPLACIAN, groups=3).square().mean())


def objective_for(content: Path, style: Path, size: int, optimizer: str) -> tuple[Objective, Tensor, int]:
    """The renderer's default objective for one stage of ``size`` px, its content image, and the lr."""
    config = resolve(("benchmark", {"optim": {"optimizer": optimizer}, "device": {"device": "cpu"}}))
    cpu = torch.device("cpu")
    precision = resolve_precision(config.device.precision, [cpu])
    extractor = precision.prepare(build_extractor(config, cpu))
    photo, painting = images.load_image(content), images.load_image(style)
    width, height = fit_long_side(photo.shape[1], photo.shape[0], size)
    stage = Stage(0, width, height, 0)
    content_t = images.to_tensor(images.resize(photo, width, height))
    style_t = images.to_tensor(images.resize(painting, *style_size(painting, stage, config.pyramid.style_scale)))
    weights = loss_weights(config)
    targets = make_targets(extractor, content_t, [style_t], [], weights, precision)
    return Objective(extractor, targets, weights, precision), content_t, config.lr


def mean_age(decay: float, iterations: int) -> float:
    """How many steps old the average's content is, on average: sum_j j d^j / sum_j d^j over the iterates."""
    weights = [decay ** j for j in range(iterations)]
    return sum(j * w for j, w in enumerate(weights)) / sum(weights)


def measure(name: str, content: Path, style: Path, optimizer: str, args: argparse.Namespace) -> list[tuple]:
    """One optimisation; rows for the photo, the last iterate, each average, and for each average the
    iterate of the same age (is the average smoother because it cancels jitter, or only because it
    lags behind, towards the smoother photo?)."""
    objective, start, lr = objective_for(content, style, args.size, optimizer)
    stepper = Stepper(start, objective, optimizer, lr)
    averages = {d: IterateAverage(d, start) for d in args.decays}
    same_age = {d: max(1, round(args.iterations - mean_age(d, args.iterations))) for d in args.decays}
    kept: dict[int, Tensor] = {}
    began = time.perf_counter()
    for iteration in range(1, args.iterations + 1):
        before = stepper.image.detach().clone()
        stepper.step()
        for average in averages.values():
            average.update(stepper.image.detach())
        if iteration in same_age.values():
            kept[iteration] = stepper.result()
    seconds = time.perf_counter() - began
    step = float((stepper.image.detach() - before).square().mean().sqrt())
    shown = {"photo": start, "last": stepper.result()}
    for d, average in averages.items():
        shown[f"avg {d:g}"] = average.value().clamp(0, 1)
        shown[f"iterate {same_age[d]} (its age)"] = kept[same_age[d]]
    rows = []
    for label, image in shown.items():
        losses = {k: float(v) for k, v in objective.loss(image).items()}
        short = label.split(' (')[0].replace(' ', '')
        images.save_image(args.out / f"{name.replace('/', '-')}-{optimizer}-{short}.png", images.to_array(image))
        rows.append((name, optimizer, label, losses["total"], losses["content"], losses["style"],
                     1e3 * laplacian_energy(image), 1e3 * float(tv_loss(image))))
    print(f"# {name} {optimizer}: {args.iterations} iterations at {tuple(start.shape[-2:])} in {seconds:.0f}s; "
          f"RMS change of a pixel in the last step {step:.2g}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--decays", type=lambda s: [float(v) for v in s.split(",")], default=[0.9, 0.95, 0.99])
    parser.add_argument("--optimizers", type=lambda s: s.split(","), default=["lbfgs", "adam"])
    parser.add_argument("--pairs", type=lambda s: s.split(","), default=list(PAIRS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/hires-nst-averaging"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    rows = [row for name, (content, style) in PAIRS.items() if name in args.pairs for optimizer in args.optimizers
            for row in measure(name, content, style, optimizer, args)]
    print("\n| pair | optimizer | image | total | content | style | laplacian² x1e3 | TV x1e3 |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, optimizer, label, total, content, style, lap, tv in rows:
        print(f"| {name} | {optimizer} | {label} | {total:.4g} | {content:.4g} | {style:.4g} | {lap:.3g} | {tv:.3g} |")


if __name__ == "__main__":
    main()
