"""Time the README's first command: the render a newcomer runs first, which must end within 10 minutes
on the 2-core dev CPU (issue 23).

Takes the `hires-nst render ...` part of the first bash block under "## Set-up" in README.md (the
install before it is timed by pip, not here), runs it as a new process into a temporary folder, and
prints the wall time, the CPU time of the process and its children, the CPU model (`lscpu`), and
whether it stayed within the budget. `--also-preview` times the same render with `--preset preview`.

    python benchmarks/first_command.py                  # run with nothing else on the machine
    python benchmarks/first_command.py --also-preview
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_SECONDS = 600.0


def first_render_command(readme: str) -> list[str]:
    """The words of the `hires-nst render` step of the README's first command."""
    setup = readme[readme.index("## Set-up"):]
    block = setup.split("```bash\n", 1)[1].split("```", 1)[0]
    steps = [step.strip() for step in block.replace("\\\n", " ").split("&&")]
    render = next(step for step in steps if step.startswith("hires-nst render"))
    return shlex.split(render)


def with_output(words: list[str], output: Path) -> list[str]:
    """The command with its `-o` pointed at ``output`` (the README writes into outputs/)."""
    index = words.index("-o")
    return [*words[:index + 1], str(output), *words[index + 2:]]


def cpu_model() -> str:
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def timed(words: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one run; runs the module, as the script would."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hires_nst", *words[1:], "-q"], cwd=ROOT, check=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--also-preview", action="store_true", help="also time it with --preset preview")
    args = parser.parse_args()
    words = first_render_command((ROOT / "README.md").read_text())
    runs = {"the README's first command": words}
    if args.also_preview:
        runs["with --preset preview"] = [*words, "--preset", "preview"]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as folder:
        for number, (name, command) in enumerate(runs.items()):
            run = with_output(command, Path(folder) / f"out{number}.png")
            wall, cpu = timed(run)
            verdict = "within" if wall <= BUDGET_SECONDS else "OVER"
            print(f"{name}: {' '.join(command)}")
            print(f"  {wall:.0f} s wall ({int(wall // 60)} min {wall % 60:.0f} s), {cpu:.0f} CPU-s; "
                  f"{verdict} the {BUDGET_SECONDS / 60:.0f}-minute budget")


if __name__ == "__main__":
    main()
