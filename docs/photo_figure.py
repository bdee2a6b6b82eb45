"""The figure of docs/photo.md: photo pairs in painting mode and photo mode, and a crop at 100%.

Usage: python docs/photo_figure.py --pairs CONTENT:STYLE[,CONTENT:STYLE] [--max-size 1024]
           [--iterations 60,30,10,4] [--out /tmp/photo-figure] [--figure docs/photo.jpg] [--crops X,Y;X,Y]

Renders each pair (paths to a content photo and a style photo) in painting mode (the defaults)
and in photo mode (``--photo``) at ``--max-size`` with the given iteration caps, measures both
with ``core/photoscore.py`` and writes one sheet: per pair a row of the style photo, the painting
render, the photo render and the content photo (scaled down), then a row of the same square cut
from each at 100% (its top-left corner given per pair in output pixels, ``--crops``).
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from hires_nst.config.settings import resolve
from hires_nst.core.photoscore import colour_distance, edge_agreement
from hires_nst.engine.render import RenderJob, render
from hires_nst.io import images
from hires_nst.io.contact_sheet import grid_sheet

CROP = 256  # side of the 100% crops, output pixels
MAX_BYTES = 600 * 1024  # the figure ships in docs/


def render_mode(content: Path, style: Path, out: Path, max_size: int, iterations: list[int], photo: bool) -> Path:
    work = out.with_suffix(".work")
    shutil.rmtree(work, ignore_errors=True)
    config = resolve(("figure", {"pyramid": {"max_size": max_size, "iterations": iterations},
                                 "loss": {"photo": photo}, "output": {"work_dir": str(work)}}))
    began = time.perf_counter()
    result = render(RenderJob(content, (style,), out, config))
    print(f"{out.name}: {time.perf_counter() - began:.0f} s", flush=True)
    return result.output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", required=True)
    parser.add_argument("--max-size", type=int, default=1024)
    parser.add_argument("--iterations", default="60,30,10,4")
    parser.add_argument("--out", default="/tmp/photo-figure")
    parser.add_argument("--figure", default="docs/photo.jpg")
    parser.add_argument("--crops", default="")
    parser.add_argument("--skip-renders", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    iterations = [int(n) for n in args.iterations.split(",")]
    crops = [tuple(int(v) for v in c.split(",")) for c in args.crops.split(";")] if args.crops else []
    cells, captions = [], []
    for index, pair in enumerate(args.pairs.split(",")):
        content, style = (Path(p) for p in pair.split(":"))
        outputs = []
        for mode in ("painting", "photo"):
            path = out / f"{content.stem}-{style.stem}-{mode}-{args.max_size}.png"
            if not args.skip_renders:
                render_mode(content, style, path, args.max_size, iterations, mode == "photo")
            outputs.append(images.load_image(path))
        height, width = outputs[0].shape[:2]
        photo = images.resize(images.load_image(content), width, height)
        painting_style = images.load_image(style)
        scores = [(edge_agreement(o, photo), colour_distance(o, painting_style)) for o in outputs]
        for mode, (edges, colour) in zip(("painting", "photo"), scores, strict=True):
            print(f"{content.stem} <- {style.stem}, {mode} mode, {width}x{height}: edges {edges:.3f}, "
                  f"colour distance {colour:.1f}", flush=True)
        left, top = crops[index] if index < len(crops) else ((width - CROP) // 2, (height - CROP) // 2)
        row = [painting_style, *outputs, photo]
        cells.append(row)
        captions.append([f"style photo: {style.stem}",
                         f"painting mode (edges {scores[0][0]:.2f}, colour {scores[0][1]:.0f})",
                         f"photo mode (edges {scores[1][0]:.2f}, colour {scores[1][1]:.0f})",
                         f"the photo ({width}x{height} render)"])
        cells.append([np.ascontiguousarray(img[top:top + CROP, left:left + CROP]) for img in row[1:]])
        captions.append([f"100% crop at ({left}, {top}): painting", "photo mode", "the photo"])
    sheet = grid_sheet(cells, captions, cell_height=CROP)
    for quality in (90, 85, 80, 75, 70):  # the largest JPEG quality under ``MAX_BYTES``
        Image.fromarray(np.round(sheet * 255).astype(np.uint8)).save(args.figure, quality=quality, optimize=True)
        if Path(args.figure).stat().st_size <= MAX_BYTES:
            break
    print(f"wrote {args.figure}: {sheet.shape[1]}x{sheet.shape[0]}, {Path(args.figure).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
