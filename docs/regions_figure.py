"""The README's Regions figure: Tübingen's sky in the style of The Starry Night, the town in The Scream's.

Usage: python docs/regions_figure.py [--size 384] [--iterations 300,150,80] [--mask-only]

The render uses the default settings (loss, pyramid, iteration caps) at ``--size``.

1. Makes ``examples/tubingen_sky.png`` from ``examples/tubingen.jpg`` by a fixed rule: the sky is
   the blue pixels (blue above red by 40 levels and above green) connected to the top edge, closed
   and opened by a 5x5 square, with holes filled; white there, black elsewhere.
2. Renders ``hires-nst render examples/tubingen.jpg starry_night.jpg the_scream.jpg --mask
   examples/tubingen_sky.png --region white=starry_night.jpg --region black=the_scream.jpg``.
3. Writes ``docs/regions.jpg``: photo, mask, the two styles, the result, captioned.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from hires_nst.config.settings import resolve
from hires_nst.engine.render import RenderJob, render
from hires_nst.io import images
from hires_nst.io.contact_sheet import grid_sheet

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PHOTO, SKY, SCREAM = EXAMPLES / "tubingen.jpg", EXAMPLES / "starry_night.jpg", EXAMPLES / "the_scream.jpg"
MASK = EXAMPLES / "tubingen_sky.png"


def sky_mask(photo: np.ndarray) -> np.ndarray:
    """(H, W, 3) in [0, 1] -> (H, W) uint8, 255 on the sky (the rule in the module docstring)."""
    rgb = np.rint(photo * 255).astype(np.int32)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    blueish = ((blue > red + 40) & (blue > green)).astype(np.uint8)
    count, labels = cv2.connectedComponents(blueish, connectivity=4)
    top = set(np.unique(labels[0][blueish[0] > 0]).tolist())
    sky = np.isin(labels, sorted(top)).astype(np.uint8) * 255
    square = np.ones((5, 5), np.uint8)
    sky = cv2.morphologyEx(cv2.morphologyEx(sky, cv2.MORPH_CLOSE, square), cv2.MORPH_OPEN, square)
    holes = sky.copy()
    flood = np.zeros((sky.shape[0] + 2, sky.shape[1] + 2), np.uint8)
    cv2.floodFill(holes, flood, (sky.shape[1] - 1, sky.shape[0] - 1), 255)  # the bottom corner is town
    return sky | cv2.bitwise_not(holes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--iterations", default="", help="caps per stage; empty: the default table")
    parser.add_argument("--mask-only", action="store_true")
    args = parser.parse_args()
    photo = images.load_image(PHOTO)
    mask = sky_mask(photo)
    images.save_image(MASK, np.repeat(mask[..., None], 3, axis=2).astype(np.float32) / 255)
    print(f"wrote {MASK}: sky {100 * (mask > 0).mean():.1f}% of the photo")
    if args.mask_only:
        return
    with tempfile.TemporaryDirectory() as folder:
        config = resolve(("regions_figure", {
            "pyramid": {"max_size": args.size,
                        "iterations": [int(n) for n in args.iterations.split(",") if n.strip()]},
            "loss": {"mask": str(MASK), "region": ["white=starry_night.jpg", "black=the_scream.jpg"]},
            "output": {"work_dir": str(Path(folder) / "work")}}))
        began = time.perf_counter()
        result = render(RenderJob(PHOTO, (SKY, SCREAM), Path(folder) / "regions.png", config))
        print(f"rendered {result.width}x{result.height} in {time.perf_counter() - began:.0f} s; losses {result.losses}")
        out = images.load_image(result.output)
    cells = [images.load_image(p) for p in (PHOTO, MASK, SKY, SCREAM)] + [out]
    captions = ["photo (tubingen.jpg)", "mask (tubingen_sky.png)", "white: starry_night.jpg",
                "black: the_scream.jpg", "result"]
    sheet = grid_sheet([cells], [captions], cell_height=192)
    images.save_image(ROOT / "docs" / "regions.jpg", sheet)
    print(f"wrote {ROOT / 'docs' / 'regions.jpg'}")


if __name__ == "__main__":
    main()
