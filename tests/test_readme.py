"""The README is one screen a newcomer can trust: short, its first command valid and cheap, its links alive."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

import hires_nst.engine.plan
from benchmarks.first_command import first_render_command, with_output
from hires_nst.cli.main import app
from hires_nst.engine.render import RenderJob
from tests.helpers.paths import ROOT

README = (ROOT / "README.md").read_text()
MAX_LINES = 150


def test_the_readme_fits_in_150_lines() -> None:
    assert README.count("\n") <= MAX_LINES


def test_the_first_screen_shows_the_picture_and_both_commands() -> None:
    first_screen = "\n".join(README.splitlines()[:45])
    assert "![" in first_screen and "docs/example.jpg" in first_screen
    assert "hires-nst render examples/tubingen.jpg examples/starry_night.jpg" in first_screen
    assert "<!-- test-command -->" in first_screen
    assert re.search(r"\*\*\d+ min \d+ s\*\*", first_screen)  # the measured cost of the first command


def test_the_first_command_renders_the_bundled_pair_in_three_small_stages(tmp_path: Path,
                                                                          fake_render: list[RenderJob]) -> None:
    words = first_render_command(README)
    assert words[:4] == ["hires-nst", "render", "examples/tubingen.jpg", "examples/starry_night.jpg"]
    result = CliRunner().invoke(app, with_output(words, tmp_path / "example.png")[1:] + ["-q"])
    assert result.exit_code == 0, result.output
    schedule, _ = hires_nst.engine.plan.plan_schedule(fake_render[0].config, 512, 384)
    assert [(s.long_side, s.iterations) for s in schedule] == [(128, 300), (256, 150), (512, 80)]


def test_every_local_link_of_the_readme_and_the_docs_exists() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which is missing"
