"""Each option declared once: a config field is the render option, its ``--help`` row, its preset key and
its ``stylize()`` keyword, so that adding an option is one field (plus its use)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

import hires_nst.engine.render
from hires_nst import stylize
from hires_nst.cli import main
from hires_nst.cli.help import PlainCommand
from hires_nst.cli.options import with_setting_options
from hires_nst.config import settings
from hires_nst.config.options import STYLE, did_you_mean, option
from hires_nst.config.renderjob import RenderJob, RenderResult
from hires_nst.config.settings import LossConfig, all_settings, resolve
from hires_nst.errors import ConfigError

runner = CliRunner()
# The render options that are no config setting: what to render and how to run.
NOT_SETTINGS = {"content", "styles", "output", "preset", "resume", "restart", "web", "open_page", "port", "host",
                "log_every", "quiet", "debug"}


@pytest.fixture
def fake_render(monkeypatch: pytest.MonkeyPatch) -> list[RenderJob]:
    """Replace the engine: record each job and write a grey image where the output goes."""
    jobs: list[RenderJob] = []

    def fake(job: RenderJob, sink: object = None) -> RenderResult:
        jobs.append(job)
        job.output.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((40, 48, 3), 128, np.uint8)).save(job.output)
        return RenderResult(output=job.output, settings=Path(f"{job.output}.json"), width=48, height=40,
                            seconds=0.1, losses={"total": 1.0}, work_dir=Path("work"))

    monkeypatch.setattr(hires_nst.engine.render, "render", fake)
    return jobs


@pytest.fixture
def grain(monkeypatch: pytest.MonkeyPatch) -> None:
    """A setting added the way a new one is: one field, here on a copy of the loss section."""
    field = option("--grain", "Film grain laid over the result.", 0.25, panel=STYLE, metavar="W")
    with_grain = dataclasses.make_dataclass("LossConfig", [("grain", float, field)], bases=(LossConfig,), frozen=True)
    monkeypatch.setitem(settings.SECTIONS, "loss", with_grain)


def _app() -> typer.Typer:
    """The render command made afresh, as the CLI makes it at import."""
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command(cls=PlainCommand)(with_setting_options(main.render.__wrapped__))  # type: ignore[attr-defined]
    return app


@pytest.mark.usefixtures("grain")
def test_a_field_added_to_a_section_is_a_render_option_in_its_panel_with_its_default(
        fake_render: list[RenderJob], pair: tuple[Path, Path], tmp_path: Path) -> None:
    help_text = runner.invoke(_app(), ["--help"], env={"COLUMNS": "200"}).output
    panel = help_text.split("╭─ Style and loss")[1].split("╰")[0]
    assert "--grain" in panel and "Film grain laid over the result. [default: 0.25]" in panel

    result = runner.invoke(_app(), [str(pair[0]), str(pair[1]), "-o", str(tmp_path / "o.png"), "--grain", "0.5", "-q"])

    assert result.exit_code == 0, result.output
    assert fake_render[0].config.loss.grain == 0.5  # type: ignore[attr-defined]


@pytest.mark.usefixtures("grain")
def test_a_field_added_to_a_section_is_a_stylize_keyword_and_a_preset_key(fake_render: list[RenderJob],
                                                                          pair: tuple[Path, Path]) -> None:
    stylize(*pair, grain=0.5)

    assert fake_render[0].config.loss.grain == 0.5  # type: ignore[attr-defined]
    assert resolve(("a preset", {"loss": {"grain": 2}})).loss.grain == 2.0  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"loss.grain \(--grain\) must be a number"):
        resolve(("a preset", {"loss": {"grain": "coarse"}}))
    with pytest.raises(ConfigError, match="grian.*did you mean grain"):
        stylize(*pair, grian=0.5)
    with pytest.raises(ConfigError, match=r"^stylize\(\): grain must be a number, got 'coarse'$"):  # a keyword's words
        stylize(*pair, grain="coarse")


def test_the_render_options_are_exactly_the_settings_and_the_commands_own() -> None:
    render = typer.main.get_command(main.app).commands["render"]  # type: ignore[attr-defined]
    names = [param.name for param in render.params]
    flags = [flag for param in render.params for flag in [*param.opts, *param.secondary_opts]]
    declared = all_settings()

    assert len(names) == len(set(names)) and len(flags) == len(set(flags))
    assert len({s.name for s in declared}) == len(declared)  # a name means one setting, whatever its section
    assert set(names) == {s.name for s in declared} | NOT_SETTINGS
    by_name = {param.name: param for param in render.params}
    for setting in declared:
        param = by_name[setting.name]
        assert param.opts == [setting.option.flag]
        assert param.rich_help_panel == setting.option.panel


def test_a_command_that_declares_a_setting_again_is_refused() -> None:
    def twice(*, max_size: Annotated[int | None, typer.Option("--max-size")] = None, **values: Any) -> None:
        """Render."""

    with pytest.raises(TypeError, match="max_size declared by the config and again"):
        with_setting_options(twice)


def test_every_setting_is_a_preset_key_and_a_stylize_keyword() -> None:
    declared = all_settings()
    layer: dict[str, dict[str, Any]] = {}
    for setting in declared:
        layer.setdefault(setting.section, {})[setting.name] = setting.default

    config = resolve(("a preset", layer))

    assert all(getattr(getattr(config, s.section), s.name) == s.default for s in declared)
    assert settings.named_layer({s.name: s.default for s in declared}, "stylize()") == layer


SPELLINGS = {  # a misspelt name -> the suggestion
    "max_sise": "did you mean max_size?",
    "stlye_weight": "did you mean style_weight?",
    "stylr_layer": "did you mean style_layers?",
    "iters": "did you mean iterations?",
    "colour": "",  # close enough to no name: no guess
}


@pytest.mark.parametrize("name", SPELLINGS)
def test_a_misspelt_name_gets_the_closest_one(name: str) -> None:
    assert did_you_mean(name, [s.name for s in all_settings()]) == SPELLINGS[name]


