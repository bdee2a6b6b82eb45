"""Which last pass keeps lines straight for less time: --photo-smooth guided or affinity (issue 24).

Usage: python benchmarks/photo_smoothing.py PHOTO STYLE OUTPUT [OUTPUT...] [--repeats 1]

For each render OUTPUT of PHOTO (any mode), runs both passes of ``matting.smooth`` at the output's
full size, guided by PHOTO resized to it, and prints their seconds and the measures of
``core/photoscore.py`` before and after: edges (gradient-orientation agreement with the photo;
higher: straighter, cleaner lines) and colour (distance to STYLE's palette; lower: closer).
"""

from __future__ import annotations

import argparse
import time

from hires_nst.core import matting
from hires_nst.core.photoscore import colour_distance, edge_agreement
from hires_nst.io import images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo")
    parser.add_argument("style")
    parser.add_argument("outputs", nargs="+")
    args = parser.parse_args()
    style = images.load_image(args.style)
    print("| output | pass | seconds | edges | colour |\n|---|---|---|---|---|")
    for path in args.outputs:
        output = images.load_image(path)
        height, width = output.shape[:2]
        photo = images.resize(images.load_image(args.photo), width, height)
        print(f"| {path} ({width}x{height}) | none | 0 | {edge_agreement(output, photo):.3f} | "
              f"{colour_distance(output, style):.1f} |")
        for method in ("guided", "affinity"):
            began = time.perf_counter()
            smoothed = matting.smooth(images.to_tensor(output), images.to_tensor(photo), method)
            seconds = time.perf_counter() - began
            result = images.to_array(smoothed)
            print(f"| | {method} | {seconds:.1f} | {edge_agreement(result, photo):.3f} | "
                  f"{colour_distance(result, style):.1f} |", flush=True)


if __name__ == "__main__":
    main()
