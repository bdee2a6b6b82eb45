"""Which loss configuration keeps the photo's subject and still paints it? (issue 17)

Usage: python benchmarks/quality.py [--size 256] [--iterations 200] [--configs today,w2,...]
                                    [--pairs tubingen:the_scream,...] [--sheet docs/quality.jpg] [--json out.json]

Renders each pair of ``../shared/images`` (photo : painting) with each configuration at ``--size``
(one stage, L-BFGS, from the photo, seed 0) and scores the written image with:

- the project's own losses, the same scorer for every configuration: content = relative conv4_2
  error against the photo; style = relative Gram error of conv1_1..conv5_1 (equal layer weights)
  against the painting at the same long side (lower is better for both);
- two measures that use no VGG at all (the independent ones):
  * structure: SSIM of the luminance against the photo's, both reduced to a quarter of the size
    (64 px for 256): the photo's large-scale structure, what a painted eye over a tower destroys
    (1 = the photo's structure, higher is better);
  * texture: sliced Wasserstein distance between the 5 x 5 RGB patches of the output and of the
    painting at the output's long side (128 fixed random directions, 4096 patches each): how
    close the fine brushwork is to the painting's (lower is better).

Prints a markdown table (and the seconds of each render) and writes a labelled contact sheet:
one row per pair (photo, painting, then each configuration, captioned with its SSIM and patch
distance). Timings are whatever this machine gives: name its CPU when quoting them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hires_nst.api import stylize
from hires_nst.config.schedule import fit_long_side
from hires_nst.config.settings import resolve
from hires_nst.engine.objective import Objective, Weights, make_targets
from hires_nst.engine.render import build_extractor
from hires_nst.io import images
from hires_nst.io.contact_sheet import grid_sheet

SHARED = Path(__file__).resolve().parents[2] / "shared" / "images"
PAIRS = ("tubingen:the_scream", "hoovertowernight:the_scream", "tubingen:starry_night", "hoovertowernight:shipwreck")

# Today's defaults spelled out, so that the table means the same whatever the defaults become.
TODAY = {"style_weight": 10.0, "style_layer_weights": "equal", "style_loss": "gram", "average_iterates": 0.0}
CONFIGS: dict[str, dict] = {
    "today": TODAY,
    "layers 256:64:16:4:1": {**TODAY, "style_layer_weights": "256:64:16:4:1"},
    "average 0.9": {**TODAY, "average_iterates": 0.9},
    "w2": {**TODAY, "style_loss": "w2"},
    "w2 + layers": {**TODAY, "style_layer_weights": "256:64:16:4:1", "style_loss": "w2"},
    "gram 16:8:4:2:1": {**TODAY, "style_layer_weights": "16:8:4:2:1"},
    "w2 16:8:4:2:1": {**TODAY, "style_layer_weights": "16:8:4:2:1", "style_loss": "w2"},
    "crowsonkb-like": {**TODAY, "style_layer_weights": "256:64:16:4:1", "style_loss": "w2", "average_iterates": 0.9},
}


# --------------------------------------------------------------------------- the independent measures


def luminance(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) in [0, 1] -> (1, 1, H, W) Rec. 709 luma."""
    weights = torch.tensor([0.2126, 0.7152, 0.0722])
    return (torch.from_numpy(rgb).float() @ weights)[None, None]


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5) -> float:
    """Mean structural similarity of two (1, 1, H, W) images in [0, 1] (Wang et al. 2004 constants)."""
    coords = torch.arange(window, dtype=torch.float32) - window // 2
    g = torch.exp(-coords.square() / (2 * sigma**2))
    kernel = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]
    blur = lambda x: F.conv2d(x, kernel)  # noqa: E731 ("valid": no padding at the border)
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    score = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(score.mean())


def structure(output: np.ndarray, photo: np.ndarray) -> float:
    """SSIM of the luminances at a quarter of the output's size."""
    width, height = max(16, output.shape[1] // 4), max(16, output.shape[0] // 4)
    small = [luminance(images.resize(x, width, height)) for x in (output, photo)]
    return ssim(*small)


def patches(rgb: np.ndarray, size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random ``size`` x ``size`` RGB patches of an (H, W, 3) image, as (count, 3 size^2)."""
    tensor = torch.from_numpy(rgb).float().permute(2, 0, 1)[None]
    unfolded = F.unfold(tensor, size)[0].T  # (positions, 3 size^2)
    pick = torch.randint(unfolded.shape[0], (count,), generator=generator)
    return unfolded[pick]


def patch_distance(output: np.ndarray, painting: np.ndarray, size: int = 5, count: int = 4096,
                   directions: int = 128) -> float:
    """Sliced Wasserstein-1 distance between the two images' patch distributions (fixed seed)."""
    g = torch.Generator().manual_seed(0)
    a, b = patches(output, size, count, g), patches(painting, size, count, g)
    axes = F.normalize(torch.randn(a.shape[1], directions, generator=g), dim=0)
    return float(((a @ axes).sort(dim=0).values - (b @ axes).sort(dim=0).values).abs().mean())


# --------------------------------------------------------------------------- the project's own losses


class Scorer:
    """The renderer's relative content and Gram style losses, with one fixed VGG19 and fixed weights."""

    def __init__(self) -> None:
        self.extractor = build_extractor(resolve(), torch.device("cpu"))
        self.weights = Weights.equal_layers(1.0, 1.0, 0.0, ["conv4_2"],  # the Gram loss, not the default w2
                                            ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"], "gram")

    def __call__(self, output: np.ndarray, photo: np.ndarray, painting: np.ndarray) -> dict[str, float]:
        tensor = images.to_tensor
        targets = make_targets(self.extractor, tensor(photo), [tensor(painting)], (), self.weights)
        terms = Objective(self.extractor, targets, self.weights).loss(tensor(output))
        return {"content": float(terms["content"]), "style": float(terms["style"])}


# --------------------------------------------------------------------------- the runs


def at_long_side(array: np.ndarray, long_side: int) -> np.ndarray:
    return images.resize(array, *fit_long_side(array.shape[1], array.shape[0], long_side))


def render(photo: Path, painting: Path, settings: dict, size: int, iterations: int) -> tuple[np.ndarray, float]:
    began = time.perf_counter()
    out = stylize(photo, painting, as_array=True, max_size=size, min_size=size, iterations=[iterations],
                  precision="fp32", **settings)
    return out, time.perf_counter() - began


def run(pairs: list[str], configs: list[str], size: int, iterations: int,
        out_dir: Path | None = None) -> tuple[list[dict], list, list]:
    scorer, rows, cells, captions = Scorer(), [], [], []
    for pair in pairs:
        photo_name, painting_name = pair.split(":")
        photo_path, painting_path = SHARED / f"{photo_name}.jpg", SHARED / f"{painting_name}.jpg"
        photo = at_long_side(images.load_image(photo_path), size)
        painting = at_long_side(images.load_image(painting_path), size)
        row_cells, row_captions = [photo, painting], [photo_name, painting_name]
        for name in configs:
            out, seconds = render(photo_path, painting_path, CONFIGS[name], size, iterations)
            photo_here = images.resize(photo, out.shape[1], out.shape[0])
            row = {"pair": pair, "config": name, "seconds": round(seconds, 1),
                   **{k: round(v, 4) for k, v in scorer(out, photo_here, painting).items()},
                   "ssim": round(structure(out, photo_here), 4), "patch": round(patch_distance(out, painting), 4)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if out_dir is not None:
                out_dir.mkdir(parents=True, exist_ok=True)
                images.save_image(out_dir / f"{photo_name}-{painting_name}-{name.replace(' ', '_')}.png", out)
            row_cells.append(out)
            row_captions.append(f"{name}: ssim {row['ssim']:.2f} patch {row['patch']:.3f}")
        cells.append(row_cells)
        captions.append(row_captions)
    return rows, cells, captions


def table(rows: list[dict], configs: list[str]) -> str:
    """One line per pair and configuration, then each configuration's means over the pairs that
    every configuration rendered (so that the means compare like with like)."""
    lines = ["| pair | configuration | content | style | SSIM | patch distance | s |", "|---|---|---|---|---|---|---|"]
    order = {c: i for i, c in enumerate(configs)}
    for row in sorted(rows, key=lambda r: (r["pair"], order.get(r["config"], len(order)))):
        lines.append(f"| {row['pair']} | {row['config']} | {row['content']:.3f} | {row['style']:.4f} | "
                     f"{row['ssim']:.3f} | {row['patch']:.4f} | {row['seconds']:.0f} |")
    common = set.intersection(*({r["pair"] for r in rows if r["config"] == c} for c in configs))
    for name in configs:
        mine = [r for r in rows if r["config"] == name and r["pair"] in common]

        def mean(key: str, mine: list[dict] = mine) -> float:
            return sum(r[key] for r in mine) / len(mine)

        lines.append(f"| mean of {len(common)} | {name} | {mean('content'):.3f} | {mean('style'):.4f} | "
                     f"{mean('ssim'):.3f} | {mean('patch'):.4f} | {mean('seconds'):.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"from: {', '.join(CONFIGS)}")
    parser.add_argument("--pairs", default=",".join(PAIRS), help="photo:painting names in ../shared/images")
    parser.add_argument("--sheet", default="docs/quality.jpg")
    parser.add_argument("--json", default="")
    parser.add_argument("--out-dir", default="", help="also save every render here as PNG")
    parser.add_argument("--table-from", nargs="*", default=[], help="only print the table of earlier --json files")
    args = parser.parse_args()
    configs, pairs = args.configs.split(","), args.pairs.split(",")
    if args.table_from:  # runs split over several processes (or machines): one table
        rows = [row for path in args.table_from for row in json.loads(Path(path).read_text())]
        print(table(rows, [c for c in CONFIGS if any(r["config"] == c for r in rows)]))
        return
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configurations {unknown}; known: {', '.join(CONFIGS)}")
    out_dir = Path(args.out_dir) if args.out_dir else None
    rows, cells, captions = run(pairs, configs, args.size, args.iterations, out_dir)
    print(table(rows, configs))
    if args.sheet:
        images.save_image(args.sheet, grid_sheet(cells, captions, cell_height=args.size * 3 // 4))
        print(f"contact sheet: {args.sheet}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
