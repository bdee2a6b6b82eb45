"""Every optimiser on the shared pair, through the command line, then ``hires-nst compare``.

Usage: python benchmarks/optimizers.py [--size 128] [--iterations 100] [--out /tmp/hires-nst-optimizers]
One single-stage render per optimiser at its default --lr (each into OUT/<name>.png with its own work
dir), then the comparison table: final losses, seconds and peak memory per optimiser.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from hires_nst.config.settings import OPTIMIZERS

SHARED = Path(__file__).resolve().parents[2] / "shared" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("/tmp/hires-nst-optimizers"))
    args = parser.parse_args()
    for name in OPTIMIZERS:
        subprocess.run([sys.executable, "-m", "hires_nst", "render", str(SHARED / "tubingen.jpg"),
                        str(SHARED / "starry_night.jpg"), "-o", str(args.out / f"{name}.png"),
                        "--max-size", str(args.size), "--iterations", str(args.iterations), "--optimizer", name,
                        "--device", "cpu", "--work-dir", str(args.out / f"work-{name}"), "--restart", "--quiet"],
                       check=True)
    subprocess.run([sys.executable, "-m", "hires_nst", "compare",
                    *(str(args.out / f"{name}.png.json") for name in OPTIMIZERS)], check=True)


if __name__ == "__main__":
    main()
