"""Pyramid vs single-stage at the same wall time: who gets the large-scale structure right?

Usage: python benchmarks/pyramid_quality.py [--size 512] [--min-size 128] [--iterations 200,100,50]

1. Renders the shared Tübingen / Starry Night pair coarse to fine (min-size -> size) and times it.
2. Measures the single-stage seconds per iteration at ``size`` and renders single-stage for as
   many iterations as fit in the pyramid's wall time.
3. Scores both outputs:
   - coarse style: both images downsampled to 128 px long side, Gram statistics of conv1_1..conv5_1
     against the style image at the same size (the renderer's relative style loss; lower is better);
   - content: the renderer's relative conv4_2 content loss at full size (lower is better).
Prints a JSON report.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from hires_nst.config.schedule import fit_long_side
from hires_nst.config.settings import RenderConfig, resolve
from hires_nst.engine.objective import Objective, Weights, make_targets
from hires_nst.engine.render import RenderJob, build_extractor, render
from hires_nst.io import images

SHARED = Path(__file__).resolve().parents[2] / "shared" / "images"
CONTENT, STYLE = SHARED / "tubingen.jpg", SHARED / "starry_night.jpg"
COARSE = 128


def at_long_side(array, long_side: int):
    return images.resize(array, *fit_long_side(array.shape[1], array.shape[0], long_side))


def score(output: Path, extractor) -> dict[str, float]:
    result, content, style = (images.load_image(p) for p in (output, CONTENT, STYLE))
    # The relative Gram loss, as these scores always were (not the config's default, w2).
    style_only = Weights.equal_layers(0.0, 1.0, 0.0, [], RenderConfig().loss.style_layers, "gram")
    small = images.to_tensor(at_long_side(result, COARSE))
    targets = make_targets(extractor, None, [images.to_tensor(at_long_side(style, COARSE))], (), style_only)
    coarse_style = float(Objective(extractor, targets, style_only).loss(small)["style"])
    content_only = Weights.equal_layers(1.0, 0.0, 0.0, ["conv4_2"], ["conv1_1"])
    full_content = images.to_tensor(images.resize(content, result.shape[1], result.shape[0]))
    targets = make_targets(extractor, full_content, [images.to_tensor(at_long_side(style, COARSE))], (), content_only)
    content_loss = float(Objective(extractor, targets, content_only).loss(images.to_tensor(result))["content"])
    return {"coarse_style_loss": round(coarse_style, 5), "content_loss": round(content_loss, 5)}


def timed_render(tmp: Path, name: str, pyramid: dict) -> tuple[Path, float]:
    config = resolve(("benchmark", {"pyramid": pyramid, "output": {"work_dir": str(tmp / name)}}))
    began = time.perf_counter()
    result = render(RenderJob(CONTENT, (STYLE,), tmp / f"{name}.png", config))
    return result.output, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--min-size", type=int, default=128)
    parser.add_argument("--iterations", default="200,100,50", help="pyramid iterations per stage")
    parser.add_argument("--keep", type=Path, help="copy both outputs into this folder")
    args = parser.parse_args()
    iterations = [int(v) for v in args.iterations.split(",")]
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        pyramid_out, pyramid_s = timed_render(tmp, "pyramid", {"min_size": args.min_size, "max_size": args.size,
                                                                "iterations": iterations})
        _, probe_s = timed_render(tmp, "probe", {"min_size": args.size, "max_size": args.size, "iterations": [3]})
        _, probe2_s = timed_render(tmp, "probe2", {"min_size": args.size, "max_size": args.size, "iterations": [6]})
        per_iteration = (probe2_s - probe_s) / 3
        overhead = probe_s - 3 * per_iteration
        single_iterations = max(1, round((pyramid_s - overhead) / per_iteration))
        single_out, single_s = timed_render(tmp, "single", {"min_size": args.size, "max_size": args.size,
                                                             "iterations": [single_iterations]})
        extractor = build_extractor(RenderConfig(), torch.device("cpu"))
        report = {
            "size": args.size, "device": "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name(),
            "pyramid": {"iterations": iterations, "min_size": args.min_size, "seconds": round(pyramid_s, 1),
                        **score(pyramid_out, extractor)},
            "single_stage": {"iterations": single_iterations, "seconds": round(single_s, 1),
                             **score(single_out, extractor)},
        }
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for path in (pyramid_out, single_out):
                images.save_image(args.keep / path.name, images.load_image(path))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
