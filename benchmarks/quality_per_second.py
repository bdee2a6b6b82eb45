"""Quality per CPU-second: a render's scores after each pyramid stage, and what each stage cost.

Renders CONTENT x STYLE through ``hires_nst.stylize`` (the default settings, or a preset and
``--set key=value`` overrides), notes the process's CPU time (``time.process_time``: user + system
of every thread, so it means the same on a busy machine) when each stage finishes, keeps each
stage's image (the work dir's ``stage-K.png``) and scores it with the independent scorer
(``../shared/eval/nst_eval.py``: coarse Gram style distance, content distance, SSIM structure,
patch texture distance). One JSON line per stage, then a table:

    python benchmarks/quality_per_second.py                       # the bundled pair, default settings
    python benchmarks/quality_per_second.py --preset gatys --threads 1 --json gatys.json
    python benchmarks/quality_per_second.py --max-size 256 --set min_size=128 --scales 128,256

It runs against any checkout with ``stylize`` (put that checkout first on PYTHONPATH), so that
"today" and "after" are measured by the same script.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCORER = ROOT.parent / "shared" / "eval" / "nst_eval.py"


def parse_value(text: str):
    """``--set`` values: JSON where it parses (numbers, lists, true/false), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def score(content: Path, style: Path, output: Path, scales: str) -> dict:
    """The independent scorer's JSON for one image (a subprocess: it loads its own VGG)."""
    if not SCORER.exists():
        return {}
    done = subprocess.run([sys.executable, str(SCORER), str(content), str(style), str(output), "--scales", scales],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def render_stages(content: Path, style: Path, preset: str | None, settings: dict, work: Path) -> list[dict]:
    """Render once; per stage: its size and the CPU-seconds and wall seconds spent by its end."""
    from hires_nst import stylize
    from hires_nst.events import StageFinished

    stages: list[dict] = []
    cpu0, wall0 = time.process_time(), time.perf_counter()

    def on_event(event) -> None:
        if isinstance(event, StageFinished):
            stages.append({"stage": event.stage, "width": event.width, "height": event.height,
                           "cpu_seconds": round(time.process_time() - cpu0, 1),
                           "wall_seconds": round(time.perf_counter() - wall0, 1),
                           "final_loss": event.losses.get("total")})

    stylize(str(content), str(style), preset=preset, callback=on_event, work_dir=work, **settings)
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--content", type=Path, default=ROOT / "examples" / "tubingen.jpg")
    parser.add_argument("--style", type=Path, default=ROOT / "examples" / "starry_night.jpg")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--max-size", type=int, default=512)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting as stylize() takes it, e.g. style_weight=20 (repeatable)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--scales", default="128,256", help="the scorer's style scales")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work dir (stage images) here")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {"max_size": args.max_size}
    for item in args.set:
        key, _, value = item.partition("=")
        settings[key] = parse_value(value)
    with tempfile.TemporaryDirectory(prefix="qps-") as scratch:
        work = args.keep or Path(scratch)
        stages = render_stages(args.content, args.style, args.preset, settings, work)
        for row in stages:
            row.update(score(args.content, args.style, work / "work" / f"stage-{row['stage']}.png", args.scales))
            print(json.dumps(row), flush=True)
    label = f"preset {args.preset}" if args.preset else "defaults"
    print(f"\n{args.content.name} x {args.style.name}, {label} {settings}, threads {torch.get_num_threads()}")
    keys = ["stage", "width", "height", "cpu_seconds", "wall_seconds"] + [
        k for k in stages[-1] if k.startswith("style_rel") or k in ("content_rel", "ssim_struct", "patch_swd")]
    print(" | ".join(keys))
    for row in stages:
        print(" | ".join(str(row.get(k, "")) for k in keys))
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "preset": args.preset, "stages": stages}, indent=1))


if __name__ == "__main__":
    main()
