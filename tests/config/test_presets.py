"""Presets: the built-in ones, resolution order (defaults < preset < flags), errors naming key and file,
and the ``presets`` command."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import hires_nst.engine.plan
import hires_nst.engine.render
from hires_nst.cli.main import app
from hires_nst.config.presets import builtin_dir, builtin_names, load_preset, output_size
from hires_nst.config.settings import RenderConfig
from hires_nst.engine.render import RenderJob
from hires_nst.errors import ConfigError
from tests.helpers.paths import ROOT

runner = CliRunner()


def write_preset(folder: Path, text: str, name: str = "tiny.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


TINY = """description = "Tiny test preset."
[pyramid]
max_size = 64
iterations = [2]
[loss]
style_weight = 3.0
"""


def test_the_built_in_presets_are_there_with_their_sizes() -> None:
    assert set(builtin_names()) >= {"preview", "screen", "print-a4", "print-a3", "poster"}
    sizes = {name: output_size(load_preset(name).config()) for name in builtin_names()}
    assert sizes["preview"] == "512 px long side"
    assert sizes["screen"] == "1920 px long side"
    assert sizes["print-a4"] == "A4 at 300 dpi: 2480x3508 px (fit)"
    assert sizes["print-a3"] == "A3 at 300 dpi: 3508x4961 px (fit)"
    assert sizes["poster"].startswith("A2 at 300 dpi: 4961x7016 px")
    for name in builtin_names():
        assert load_preset(name).description


def test_print_presets_write_16_bit_tiffs() -> None:
    config = load_preset("print-a4").config()
    assert (config.output.format, config.output.bit_depth, config.print.dpi) == ("tif", 16, 300)


def test_top_level_presets_folder_is_the_packaged_one_and_ships_in_the_wheel() -> None:
    assert (ROOT / "presets").resolve() == builtin_dir().resolve()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "preset_files/*.toml" in pyproject["tool"]["setuptools"]["package-data"]["hires_nst.config"]


def test_flags_override_the_preset_which_overrides_the_defaults(tmp_path: Path, fake_render: list[RenderJob]) -> None:
    preset = write_preset(tmp_path, TINY)
    result = runner.invoke(app, ["render", "c.png", "s.png", "-o", str(tmp_path / "o.png"), "--preset", str(preset),
                                 "--max-size", "48", "-q"])
    assert result.exit_code == 0, result.output
    config = fake_render[0].config
    assert config.pyramid.max_size == 48  # flag beats preset
    assert config.loss.style_weight == 3.0 and config.pyramid.iterations == (2,)  # preset beats default
    assert config.loss.content_weight == RenderConfig().loss.content_weight  # default


def test_a_built_in_preset_by_name(tmp_path: Path, fake_render: list[RenderJob]) -> None:
    result = runner.invoke(app, ["render", "c.png", "s.png", "-o", str(tmp_path / "o.png"), "--preset", "preview",
                                 "-q"])
    assert result.exit_code == 0, result.output
    assert fake_render[0].config.pyramid.iterations == (100, 40, 20)


@pytest.mark.parametrize("preset, max_size, expected", [
    ("preview", "1024", [100, 40, 20, 20]), ("preview", "256", [100, 40]),
    ("screen", "3840", [300, 150, 80, 50, 50, 50]), ("screen", "1024", [300, 150, 80, 50]),
])
def test_a_preset_iteration_list_fits_another_max_size(preset: str, max_size: str, expected: list[int],
                                                       tmp_path: Path, fake_render: list[RenderJob]) -> None:
    result = runner.invoke(app, ["render", "c.png", "s.png", "-o", str(tmp_path / "o.png"), "--preset", preset,
                                 "--max-size", max_size, "-q"])
    assert result.exit_code == 0, result.output
    schedule, _ = hires_nst.engine.plan.plan_schedule(fake_render[0].config, 800, 600)
    assert [stage.iterations for stage in schedule] == expected
    assert schedule[-1].long_side == int(max_size)


def test_no_fit_iterations_makes_a_list_exact_again(tmp_path: Path, fake_render: list[RenderJob]) -> None:
    result = runner.invoke(app, ["render", "c.png", "s.png", "-o", str(tmp_path / "o.png"), "--preset", "preview",
                                 "--max-size", "1024", "--iterations", "9,8", "--no-fit-iterations", "-q"])
    assert result.exit_code == 0, result.output
    with pytest.raises(ConfigError, match="lists 2 values but the pyramid has 4 stages"):
        hires_nst.engine.plan.plan_schedule(fake_render[0].config, 800, 600)


@pytest.mark.parametrize("text, expected", [
    ("[loss]\nstyle_wieght = 1.0\n", "unknown setting loss.style_wieght; did you mean style_weight?"),
    ("[pyramid]\nstyle_weight = 1.0\n", "unknown setting pyramid.style_weight; style_weight is a [loss] setting"),
    ("[pyramid]\nmax_size = \"big\"\n", "pyramid.max_size (--max-size) must be an integer, got 'big'"),
    ("[print]\nprint_size = \"A9\"\n", "--print-size 'A9'"),
    ("colour = 1\n", "unknown key 'colour'"),
    ("[lossy]\nx = 1\n", "unknown key 'lossy'; did you mean loss?"),
    ("description = 3\n", "description must be a string"),
    ("[loss\n", "not valid TOML"),
])
def test_preset_mistakes_name_the_key_and_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = write_preset(tmp_path, text, "bad.toml")
    with pytest.raises(ConfigError) as error:
        load_preset(path)
    assert expected in str(error.value) and str(path) in str(error.value)


def test_an_unknown_preset_name_lists_the_built_in_ones() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'huge'; built-in presets: gatys, photo, poster, preview"):
        load_preset("huge")
    with pytest.raises(ConfigError, match="unknown preset 'previw'; did you mean preview\\? built-in presets: "):
        load_preset("previw")


def test_presets_command_lists_every_preset_with_size_and_description() -> None:
    result = runner.invoke(app, ["presets"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == builtin_names()
    a4 = next(line for line in lines if line.startswith("print-a4"))
    assert "A4 at 300 dpi: 2480x3508 px" in a4 and "16-bit TIFF" in a4


def test_presets_show_prints_the_resolved_values_marking_the_presets(tmp_path: Path) -> None:
    result = runner.invoke(app, ["presets", "show", "print-a4"])
    assert result.exit_code == 0, result.output
    assert 'print_size = "A4"  # preset' in result.stdout
    assert "bit_depth = 16  # preset" in result.stdout
    assert "tv_weight = 0.0\n" in result.stdout  # a default, unmarked
    assert "2480x3508" in result.stdout
    body = "\n".join(line for line in result.stdout.splitlines() if not line.startswith("#"))
    assert tomllib.loads(body)["print"]["dpi"] == 300  # the listing is valid TOML


def test_presets_show_of_a_bad_file_is_one_line(tmp_path: Path) -> None:
    path = write_preset(tmp_path, "[loss]\nstyle_wieght = 1.0\n", "bad.toml")
    result = runner.invoke(app, ["presets", "show", str(path)])
    assert result.exit_code == 2
    [line] = result.stderr.splitlines()
    assert line.startswith("error: preset ") and "style_wieght" in line


@pytest.mark.parametrize("command", [["presets", "--help"], ["presets", "show", "--help"], ["batch", "--help"]])
def test_help_of_the_new_commands(command: list[str]) -> None:
    result = runner.invoke(app, command)
    assert result.exit_code == 0 and "Usage" in result.stdout


def test_the_docs_preset_example_is_valid(tmp_path: Path) -> None:
    text = (ROOT / "docs" / "print.md").read_text()
    block = text[text.index("## Presets"):].split("```toml\n", 1)[1].split("```", 1)[0]
    config = load_preset(write_preset(tmp_path, block, "soft.toml")).config()
    assert (config.pyramid.max_size, config.loss.tv_weight, config.output.bit_depth) == (3000, 0.001, 16)


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_preset_that_is_no_regular_file_says_what_it_is(tmp_path: Path, kind: str) -> None:
    import os

    path = tmp_path / "p.toml"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    with pytest.raises(ConfigError) as error:
        load_preset(str(path))  # a FIFO is never opened: that would wait for a writer forever
    assert "not found" not in str(error.value) and str(path) in str(error.value)
    assert ("named pipe" if kind == "fifo" else "folder") in str(error.value)


PRINT_PRESETS = [name for name in builtin_names() if load_preset(name).config().print.print_size]

# A preset of a user's own that starts its pyramid high (the print-a3 did: min_size 256).
HIGH_START = """description = "Starts at 256 px."
[pyramid]
min_size = 256
"""


def test_there_are_print_presets_to_test() -> None:
    assert set(PRINT_PRESETS) >= {"print-a4", "print-a3", "poster"}


@pytest.mark.parametrize("preset", PRINT_PRESETS)
@pytest.mark.parametrize("paper", ["20x15mm", "15x20mm"])
def test_every_print_preset_renders_a_20_mm_print(preset: str, paper: str, tmp_path: Path,
                                                  fake_render: list[RenderJob]) -> None:
    result = runner.invoke(app, ["render", "c.png", "s.png", "-o", str(tmp_path / "o"), "--preset", preset,
                                 "--print-size", paper, "-q"])
    assert result.exit_code == 0, result.output
    schedule, _ = hires_nst.engine.plan.plan_schedule(fake_render[0].config, 800, 600)
    assert schedule[-1].long_side == 236  # 20 mm at 300 dpi
    assert schedule[0].long_side <= schedule[-1].long_side
    assert [s.long_side for s in schedule] == [128, 236]


def test_a_presets_first_stage_gives_way_to_a_smaller_print(tmp_path: Path, fake_render: list[RenderJob]) -> None:
    preset = write_preset(tmp_path, HIGH_START + '[print]\nprint_size = "A4"\n')
    result = runner.invoke(app, ["render", "c.png", "s.png", "-o", str(tmp_path / "o"), "--preset", str(preset),
                                 "--print-size", "20x15mm", "-q"])
    assert result.exit_code == 0, result.output
    config = fake_render[0].config
    schedule, _ = hires_nst.engine.plan.plan_schedule(config, 800, 600)
    assert [s.long_side for s in schedule] == [236]  # one stage, the print itself
    note = hires_nst.engine.plan.raised_first_stage(config, schedule)
    assert note == "the print is 236x177 px, smaller than --min-size 256: the pyramid starts at 236 px"


def test_a_presets_first_stage_gives_way_to_a_typed_max_size(tmp_path: Path, fake_render: list[RenderJob]) -> None:
    preset = write_preset(tmp_path, HIGH_START)
    result = runner.invoke(app, ["render", "c.png", "s.png", "-o", str(tmp_path / "o.png"), "--preset", str(preset),
                                 "--max-size", "200", "-q"])
    assert result.exit_code == 0, result.output
    assert fake_render[0].config.pyramid.min_size == 0  # back to the default: min(128, max-size)
    schedule, _ = hires_nst.engine.plan.plan_schedule(fake_render[0].config, 800, 600)
    assert [s.long_side for s in schedule] == [128, 200]


@pytest.mark.parametrize("preset_text, flags", [
    ("", ["--min-size", "256", "--max-size", "200"]),  # the user typed both
    ("[pyramid]\nmax_size = 200\n", ["--min-size", "256"]),  # the user typed the first stage after the size
    ("[pyramid]\nmin_size = 256\nmax_size = 200\n", []),  # the preset contradicts itself
])
def test_a_first_stage_above_the_size_from_one_hand_is_an_error(preset_text: str, flags: list[str],
                                                                 tmp_path: Path) -> None:
    preset = write_preset(tmp_path, 'description = "x"\n' + preset_text)
    result = runner.invoke(app, ["render", "c.png", "s.png", "-o", str(tmp_path / "o.png"), "--preset", str(preset),
                                 *flags])
    assert result.exit_code == 2
    assert "--min-size 256 is larger than --max-size 200" in result.output
