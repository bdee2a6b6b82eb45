"""``--help`` a person can read: options in panels with their defaults, no type labels, and fast
because nothing on the way to it imports torch."""

from __future__ import annotations

import subprocess
import sys

import typer
from typer.testing import CliRunner

from hires_nst import __version__
from hires_nst.cli.help import ARGUMENTS
from hires_nst.cli.main import app
from hires_nst.config.options import PANELS

runner = CliRunner()


def _render_help() -> str:
    result = runner.invoke(app, ["render", "--help"], env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    return result.output


def test_render_help_groups_the_options_in_named_panels_in_order() -> None:
    text = _render_help()
    titles = [line.split("─ ", 1)[1].split(" ─")[0] for line in text.splitlines() if line.startswith("╭─ ")]
    assert titles == ["Arguments", "Essentials", "Style and loss", "Pyramid", "Print and output",
                      "Devices and speed", "Checkpoints", "Experiments", "Watching and messages"]


def test_every_render_option_sits_in_a_panel_and_preset_is_an_essential() -> None:
    render = typer.main.get_command(app).commands["render"]
    unplaced = {param.name for param in render.params if getattr(param, "rich_help_panel", None) not in PANELS}
    assert unplaced <= set(ARGUMENTS), unplaced
    essentials = _render_help().split("╭─ Essentials")[1].split("╰")[0]
    for flag in ("--preset", "--output", "--max-size", "--iterations"):
        assert flag in essentials


def test_render_help_shows_defaults_and_no_internal_type_labels() -> None:
    text = " ".join(_render_help().split())  # wrapped lines joined
    assert "[default: 512]" in text  # --max-size
    assert "[default: lbfgs]" in text
    assert "[default: 127.0.0.1]" in text
    for label in ("<list[Path]>", "<path>", "<int>", "<float>", "<str>", "<bool>"):
        assert label not in text


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"hires-nst {__version__}"


def test_the_command_line_loads_without_torch() -> None:
    """torch and torchvision take seconds to import; --help must not wait for them."""
    code = ("import sys, hires_nst.cli.main, hires_nst.web.server, hires_nst\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'cv2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
