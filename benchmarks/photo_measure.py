"""Photo mode against painting mode (issue 24): edges kept, colours taken; and the sweeps behind
photo mode's defaults.

Usage: python benchmarks/photo_measure.py [--size 256] [--iterations 80,40]
           [--pairs tubingen:hoovertowernight,hoovertowernight:tubingen]
           [--configs painting,photo-100,photo-1000,...] [--out /tmp/photo] [--scorer PATH] [--json out.json]

Renders each pair (content photo : style photo, from ``../shared/images`` or paths) with each
configuration of ``CONFIGS`` (the default pyramid up to ``--size``, the given iterations, seed 0)
and scores the written image with the two measures of ``core/photoscore.py``:

- edges: gradient-orientation agreement with the content photo, where it has edges (1: every
  edge kept in place and direction; about 0.5: none). Brush texture and bent lines lower it.
- colour: W2 distance between Gaussian fits of the output's and the style photo's pixel colours
  (0..255 RGB units; lower: the style photo's palette).

``--scorer PATH`` also runs an independent scorer ``PATH CONTENT STYLE OUTPUT`` (one JSON line) on
each output and adds its numbers. Prints a markdown table; timings are whatever this machine gives.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hires_nst.api import stylize
from hires_nst.core import color
from hires_nst.core.photoscore import colour_distance, edge_agreement
from hires_nst.io import images

SHARED = Path(__file__).resolve().parents[2] / "shared" / "images"
PAIRS = ("tubingen:hoovertowernight", "hoovertowernight:tubingen")

# "recoloured" starts from the photo with the style photo's colour mean and covariance
# (``color.match_colors`` the other way round): colour statistics transfer, then the optimisation.
CONFIGS: dict[str, dict] = {
    "painting": {},
    "photo-0": {"photo": True, "photo_weight": 0.0},
    "photo-10": {"photo": True, "photo_weight": 10.0},
    "photo-100": {"photo": True, "photo_weight": 100.0},
    "photo-1000": {"photo": True, "photo_weight": 1000.0},
    "photo-10000": {"photo": True, "photo_weight": 10000.0},
    "photo": {"photo": True},
    "photo recoloured": {"photo": True, "init": "recoloured"},
}


def image_path(name: str) -> Path:
    path = Path(name)
    return path if path.suffix else SHARED / f"{name}.jpg"


def render_one(content: Path, style: Path, settings: dict, size: int, iterations: list[int],
               out: Path) -> tuple[np.ndarray, float]:
    settings = dict(settings)
    if settings.get("init") == "recoloured":
        start = color.match_colors(images.load_image(content), images.load_image(style))
        init = out.with_name(out.stem + "-init.png")
        images.save_image(init, start)
        settings["init"] = str(init)
    began = time.perf_counter()
    result = stylize(str(content), str(style), max_size=size, iterations=iterations, fit_iterations=True,
                     as_array=True, **settings)
    seconds = time.perf_counter() - began
    assert isinstance(result, np.ndarray)
    images.save_image(out, result)
    return result, seconds


def measure(content: Path, style: Path, output: np.ndarray) -> dict[str, float]:
    photo = images.resize(images.load_image(content), output.shape[1], output.shape[0])
    return {"edges": edge_agreement(output, photo), "colour": colour_distance(output, images.load_image(style))}


def independent(scorer: str, content: Path, style: Path, output: Path) -> dict[str, float]:
    line = subprocess.run([sys.executable, scorer, str(content), str(style), str(output)], check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return {k: float(v) for k, v in json.loads(line).items() if isinstance(v, (int, float))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", default="80,40")
    parser.add_argument("--pairs", default=",".join(PAIRS))
    parser.add_argument("--configs", default="painting,photo-100,photo-1000,photo-10000")
    parser.add_argument("--out", default="/tmp/photo-measure")
    parser.add_argument("--scorer", default="")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    iterations = [int(n) for n in args.iterations.split(",")]
    rows = []
    for pair in args.pairs.split(","):
        content, style = (image_path(p) for p in pair.split(":"))
        for name in args.configs.split(","):
            path = out / f"{content.stem}-{style.stem}-{name.replace(' ', '_')}-{args.size}.png"
            result, seconds = render_one(content, style, CONFIGS[name], args.size, iterations, path)
            row = {"pair": pair, "config": name, "seconds": seconds, **measure(content, style, result)}
            if args.scorer:
                row.update(independent(args.scorer, content, style, path))
            rows.append(row)
            print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k not in ("pair", "config")]
    print("\n| pair | config | " + " | ".join(keys) + " |\n|---|---|" + "---|" * len(keys))
    for row in rows:
        print(f"| {row['pair']} | {row['config']} | " + " | ".join(f"{row[k]:.4g}" for k in keys) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
