"""The README's hero image and its "The default render" figure, both made with the default settings.

Usage: python docs/default_figure.py [--size 512] [--work outputs/figure]

Renders (``hires_nst.stylize``, 512 px, the default pyramid) Tübingen in the style of The Scream and
of The Starry Night, each with the default settings and with ``--preset gatys``, keeping every
render in ``--work`` (a render already there is reused, so the script can be stopped and run
again). Then writes

* ``docs/default_render.jpg``: a row per pair: photo, painting, the default, ``--preset gatys``;
* ``docs/example.jpg``: the default render of the bundled pair, what the README's first command makes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from hires_nst import stylize
from hires_nst.io import images
from hires_nst.io.contact_sheet import grid_sheet

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
PHOTO = EXAMPLES / "tubingen.jpg"
PAINTINGS = (EXAMPLES / "the_scream.jpg", EXAMPLES / "starry_night.jpg")
SETTINGS = {"default": None, "gatys": "gatys"}  # column -> preset


def rendered(painting: Path, column: str, size: int, work: Path) -> np.ndarray:
    """The render of PHOTO in ``painting``'s style with ``column``'s settings, from ``work`` if there."""
    path = work / f"{PHOTO.stem}-{painting.stem}-{column}-{size}.png"
    if not path.exists():
        began = time.perf_counter()
        image = stylize(PHOTO, painting, preset=SETTINGS[column], max_size=size, as_array=True)
        images.save_image(path, image, bit_depth=16)
        print(f"rendered {path.name} in {time.perf_counter() - began:.0f} s", flush=True)
    return images.load_image(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "figure")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows, captions = [], []
    for painting in PAINTINGS:
        cells = [images.load_image(PHOTO), images.load_image(painting)]
        cells += [rendered(painting, column, args.size, args.work) for column in SETTINGS]
        rows.append(cells)
        captions.append([f"photo ({PHOTO.name})", f"painting ({painting.name})", "the default", "--preset gatys"])
    images.save_image(ROOT / "docs" / "default_render.jpg", grid_sheet(rows, captions, cell_height=256))
    hero = rendered(PAINTINGS[1], "default", args.size, args.work)
    images.save_image(ROOT / "docs" / "example.jpg", hero)
    print(f"wrote {ROOT / 'docs' / 'default_render.jpg'} and {ROOT / 'docs' / 'example.jpg'}")


if __name__ == "__main__":
    main()
