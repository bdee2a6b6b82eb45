"""How many iterations each pyramid stage really needs: loss and scores against iterations.

Renders CONTENT x STYLE once with early stopping off (``tolerance=0``) and generous caps, keeps
the loss of every iteration and a snapshot of the image every ``--every`` iterations (the stage's
best point, what it would hand on), scores each snapshot with the independent scorer
(``../shared/eval/nst_eval.py``) and notes the CPU-seconds spent by then. Then, from the loss
curves, it shows where ``--tolerance T --patience P`` would have ended each stage, for a few T:

    python benchmarks/convergence.py --max-size 256 --set min_size=128 --iterations 600,300
    python benchmarks/convergence.py --max-size 512 --iterations 500,200 --json conv.json

(The stop a tolerance would make at a later stage is read off this run's curve, which started
from the earlier stage's capped result; the defaults chosen from it were then rendered for real.)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_per_second import ROOT, parse_value, score  # noqa: E402

TOLERANCES = (0.0005, 0.001, 0.002, 0.005, 0.01)


def stop_iteration(totals: list[float], tolerance: float, patience: int) -> int:
    """Where ``optimize.Convergence`` would end a stage reporting ``totals`` every iteration."""
    from hires_nst.engine.optimize import Convergence

    stop = Convergence(tolerance, patience)
    for iteration, total in enumerate(totals, 1):
        if stop.converged(iteration, total):
            return iteration
    return len(totals)


def render_traced(content: Path, style: Path, settings: dict, every: int, folder: Path) -> tuple[dict, list[dict]]:
    """Per stage the loss of every iteration; snapshots (saved as PNG) with the CPU-seconds by then."""
    from hires_nst import stylize
    from hires_nst.events import Snapshot, Step
    from hires_nst.io import images

    losses: dict[int, list[float]] = {}
    shots: list[dict] = []
    cpu0 = time.process_time()

    def on_event(event) -> None:
        if isinstance(event, Step):
            losses.setdefault(event.stage, []).append(event.losses["total"])
        elif isinstance(event, Snapshot) and event.iteration:
            path = folder / f"snap-{event.stage}-{event.iteration:04d}.png"
            images.save_image(path, event.image)
            shots.append({"stage": event.stage, "iteration": event.iteration, "path": str(path),
                          "cpu_seconds": round(time.process_time() - cpu0, 1)})

    animation = {"animate": str(folder / "frames.gif"), "animate_every": every,
                 "animate_size": settings.get("max_size", 512)}
    stylize(str(content), str(style), callback=on_event, work_dir=folder / "work",
            **{"tolerance": 0.0, **settings, **animation})
    return losses, shots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--content", type=Path, default=ROOT / "examples" / "tubingen.jpg")
    parser.add_argument("--style", type=Path, default=ROOT / "examples" / "starry_night.jpg")
    parser.add_argument("--max-size", type=int, default=512)
    parser.add_argument("--iterations", default="500,200", help="caps per stage, e.g. 600,300")
    parser.add_argument("--every", type=int, default=50, help="score the image every N iterations")
    parser.add_argument("--patience", type=int, default=50)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--scales", default="128,256")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"max_size": args.max_size, "iterations": [int(v) for v in args.iterations.split(",")],
                "patience": args.patience}
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = parse_value(value)
    with tempfile.TemporaryDirectory(prefix="convergence-") as scratch:
        losses, shots = render_traced(args.content, args.style, settings, args.every, Path(scratch))
        for shot in shots:
            shot.update(score(args.content, args.style, Path(shot.pop("path")), args.scales))
            shot["loss"] = round(losses[shot["stage"]][shot["iteration"] - 1], 5)
            print(json.dumps(shot), flush=True)
    stops = {str(t): [stop_iteration(curve, t, args.patience) for _, curve in sorted(losses.items())]
             for t in TOLERANCES}
    print(f"\n{args.content.name} x {args.style.name}, {settings}, threads {torch.get_num_threads()}")
    for stage, curve in sorted(losses.items()):
        best = float(np.min(curve))
        near = [next(i + 1 for i, v in enumerate(curve) if v <= best * (1 + slack)) for slack in (0.05, 0.02, 0.01)]
        print(f"stage {stage + 1}: {len(curve)} iterations, best {best:.4f}; within 5/2/1% of it by iteration "
              f"{near[0]}/{near[1]}/{near[2]}")
    for tolerance, where in stops.items():
        print(f"--tolerance {tolerance} --patience {args.patience}: stages end at {where}")
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "losses": losses, "shots": shots, "stops": stops},
                                        indent=1))


if __name__ == "__main__":
    main()
