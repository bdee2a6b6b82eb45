"""A CPU-only install takes torch alone: the default render must not need torchvision.

The subprocess hides torchvision (an import of it raises ImportError, as on a machine without it) and
renders the bundled pair at 32 px with the default weights; asking for what does need torchvision
gets one line naming the package to install, not a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import CONTENT, ROOT, STYLE

HIDE_TORCHVISION = """
import importlib.abc, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            raise ImportError("No module named 'torchvision'")
        return None
sys.meta_path.insert(0, Hide())
sys.argv = ["hires-nst"] + sys.argv[1:]
from hires_nst.cli.main import main
main()
"""


def _render(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", HIDE_TORCHVISION, "render", str(CONTENT), str(STYLE), "-o", str(out),
               "--max-size", "32", "--iterations", "3", *extra]
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_the_default_render_runs_without_torchvision(tmp_path: Path) -> None:
    done = _render(tmp_path / "out.png")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.png").stat().st_size > 0
    assert "torchvision" not in done.stderr


def test_what_needs_torchvision_says_how_to_get_it(tmp_path: Path) -> None:
    done = _render(tmp_path / "out.png", "--weights", "torchvision")
    assert done.returncode != 0
    assert "needs torchvision, which is not installed: pip install torchvision" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "out.png").exists()
