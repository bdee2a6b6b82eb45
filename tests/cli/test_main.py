"""The command line: help everywhere, options reach the engine, every mistake is one line and exit 1."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

import hires_nst.engine.render
from hires_nst.cli.main import app
from hires_nst.config.settings import SECTIONS, RenderConfig, flag_of
from hires_nst.engine.render import RenderJob, RenderResult
from hires_nst.errors import InputError, Interrupted
from tests.helpers.paths import CONTENT, ROOT, STYLE
from tests.helpers.synthetic import write_image

runner = CliRunner()


@pytest.fixture
def inputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A content and a style image in tmp_path/in; tmp_path is also the working directory, so that
    anything a render writes relative to it (the default work dir) lands where the tests can see it."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "in"
    folder.mkdir()
    return write_image(folder / "c.png"), write_image(folder / "s.png", 40, 48, seed=1)


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


# --- help ---------------------------------------------------------------------------------------


def test_every_command_and_parameter_has_help() -> None:
    group = typer.main.get_command(app)
    assert group.help
    assert set(group.commands) >= {"render", "info"}
    for name, command in group.commands.items():
        assert command.help, f"command {name} has no help"
        for param in command.params:
            assert getattr(param, "help", None), f"{name}: parameter {param.name} has no help"


def test_every_config_setting_is_a_render_option() -> None:
    render = typer.main.get_command(app).commands["render"]
    flags = {opt for param in render.params for opt in param.opts}
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            assert flag_of(section, field.name) in flags, f"{section}.{field.name} has no option"


@pytest.mark.parametrize("command", ["render", "info"])
def test_help_works(command: str) -> None:
    result = runner.invoke(app, [command, "--help"])

    assert result.exit_code == 0, result.output
    assert "Usage" in result.stdout


# --- options reach the engine ---------------------------------------------------------------------


def test_options_reach_the_engine_config(fake_render: list[RenderJob], inputs: tuple[Path, Path],
                                         tmp_path: Path) -> None:
    content, style = inputs
    args = ["render", str(content), str(style), str(style), "-o", str(tmp_path / "out.png"),
            "--max-size", "300", "--iterations", "50,20", "--style-weight", "3", "--optimizer", "adam",
            "--lr", "0.1", "--init", "noise", "--seed", "7", "--device", "cpu", "--weights", "torchvision",
            "--pooling", "avg", "--style-blend", "0.7,0.3", "--preserve-color", "luminance", "--style-upscale",
            "--work-dir", str(tmp_path / "work"), "--save-every", "10", "--resume", "--quiet"]

    result = runner.invoke(app, args)

    assert result.exit_code == 0, result.output
    [job] = fake_render
    assert (job.content, job.styles, job.output) == (content, (style, style), tmp_path / "out.png")
    config = job.config
    assert config.pyramid.max_size == 300 and config.pyramid.iterations == (50, 20)
    assert config.loss.style_weight == 3.0 and config.loss.style_blend == (0.7, 0.3)
    assert (config.optim.optimizer, config.optim.lr, config.optim.init, config.optim.seed) == ("adam", 0.1, "noise", 7)
    assert (config.device.device, config.model.weights, config.model.pooling) == ("cpu", "torchvision", "avg")
    assert config.loss.preserve_color == "luminance" and config.pyramid.style_upscale is True
    assert (config.output.work_dir, config.output.save_every) == (str(tmp_path / "work"), 10)
    assert (job.resume, job.restart) == (True, False)
    defaults = RenderConfig()
    assert config.loss.content_weight == defaults.loss.content_weight
    assert config.pyramid.min_size == defaults.pyramid.min_size
    assert config.pyramid.scale_factor == defaults.pyramid.scale_factor
    assert config.model.preprocessing == defaults.model.preprocessing
    assert config.output.save_stages == defaults.output.save_stages


def test_unset_options_keep_the_dataclass_defaults(fake_render: list[RenderJob], inputs: tuple[Path, Path],
                                                   tmp_path: Path) -> None:
    content, style = inputs

    result = runner.invoke(app, ["render", str(content), str(style), "-o", str(tmp_path / "out.png"), "-q"])

    assert result.exit_code == 0, result.output
    assert fake_render[0].config == RenderConfig()
    assert (fake_render[0].resume, fake_render[0].restart) == (False, False)


def test_quiet_prints_nothing_and_default_prints_one_summary_line(fake_render: list[RenderJob],
                                                                  inputs: tuple[Path, Path], tmp_path: Path) -> None:
    content, style = inputs
    args = ["render", str(content), str(style), "-o", str(tmp_path / "out[1].png")]

    quiet = runner.invoke(app, args + ["--quiet"])
    loud = runner.invoke(app, args)

    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (0, "", "")
    assert loud.exit_code == 0
    assert loud.stderr.count("\n") == 1 and "wrote" in loud.stderr and "out[1].png" in loud.stderr


# --- mistakes: one line on stderr, exit 1 (2 for a setting), nothing written -----------------------------------------


def _truncated_png(path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((40, 48, 3), np.uint8) + 90).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


# name: (extra setup on the input folder, args after "render" with {c} {s} {o} {dir}, expected in the message)
MISTAKES = {
    "missing content": ("{dir}/nope.png {s} -o {o}", "content image not found"),
    "missing style": ("{c} {dir}/nope.png -o {o}", "style image 1 not found"),
    "non-image style": ("{c} {dir}/text.png -o {o}", "not an image"),
    "truncated content": ("{dir}/truncated.png {s} -o {o}", "truncated or corrupt"),
    "empty content": ("{dir}/empty.png {s} -o {o}", "empty file"),
    "output parent is a file": ("{c} {s} -o {dir}/text.png/out.png", "not a folder"),
    "unsupported output extension": ("{c} {s} -o {dir}/out.gif", "unsupported extension"),
    "negative max size": ("{c} {s} -o {o} --max-size -5", "--max-size"),
    "zero max size": ("{c} {s} -o {o} --max-size=0", "--max-size"),
    "zero iterations": ("{c} {s} -o {o} --iterations 0", "--iterations"),
    "negative style weight": ("{c} {s} -o {o} --style-weight -1", "--style-weight"),
    "negative content weight": ("{c} {s} -o {o} --content-weight -1", "--content-weight"),
    "min size above max size": ("{c} {s} -o {o} --min-size 64 --max-size 32", "--min-size"),
    "scale factor one": ("{c} {s} -o {o} --scale-factor 1", "--scale-factor"),
    "unknown optimizer": ("{c} {s} -o {o} --optimizer foo", "--optimizer"),
    "unknown pooling": ("{c} {s} -o {o} --pooling foo", "--pooling"),
    "style blend count": ("{c} {s} -o {o} --style-blend 0.7,0.3", "--style-blend has 2 weights for 1 style"),
    "unknown layer (long message)": ("{c} {s} -o {o} --content-layers foo", "unknown layer 'foo'"),
    "missing init image": ("{c} {s} -o {o} --init {dir}/nope.png", "--init image not found"),
    "unknown device": ("{c} {s} -o {o} --device tpu", "device"),
    "missing weights file": ("{c} {s} -o {o} --weights /nonexistent.pth", "weights file not found"),
    "brackets in a path": ("{dir}/[x]/c[/].png {s} -o {o}", "[x]/c[/].png"),
}


# Settings out of range are usage errors (ConfigError): exit 2, as click's own for a wrong type.
USAGE_MISTAKES = {"negative max size", "zero max size", "zero iterations", "negative style weight",
                  "negative content weight", "min size above max size", "scale factor one", "unknown optimizer",
                  "unknown pooling", "style blend count", "unknown layer (long message)", "unknown device"}


@pytest.mark.parametrize("quiet", [True, False], ids=["quiet", "progress"])
@pytest.mark.parametrize("mistake", MISTAKES)
def test_mistake_gives_one_line_exit_1_or_2_and_writes_nothing(tmp_path: Path, inputs: tuple[Path, Path],
                                                          mistake: str, quiet: bool) -> None:
    folder = inputs[0].parent
    (folder / "text.png").write_text("not an image\n")
    (folder / "empty.png").write_bytes(b"")
    _truncated_png(folder / "truncated.png")
    template, expected = MISTAKES[mistake]
    args = template.format(c=inputs[0], s=inputs[1], o=tmp_path / "out" / "out.png", dir=folder).split()
    before = _files(tmp_path)

    result = runner.invoke(app, ["render", *args] + (["--quiet"] if quiet else []))

    assert result.exit_code == (2 if mistake in USAGE_MISTAKES else 1), (result.exception, result.output)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in result.output
    assert _files(tmp_path) == before  # no output, no temp file, not even the output folder


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_is_one_clear_line(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    result = runner.invoke(app, ["render", str(inputs[0]), str(inputs[1]), "-o", str(tmp_path / "out.png"),
                                 "--device", "cuda"])

    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: --device cuda") and "CUDA is not available" in line
    assert not (tmp_path / "out.png").exists()


def test_wrong_option_type_is_a_usage_error(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    result = runner.invoke(app, ["render", str(inputs[0]), str(inputs[1]), "-o", str(tmp_path / "o.png"),
                                 "--max-size", "big"])

    assert result.exit_code == 2
    assert "--max-size" in result.stderr and "Traceback" not in result.output


def test_debug_lets_the_exception_and_its_traceback_through(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    result = runner.invoke(app, ["render", str(tmp_path / "nope.png"), str(inputs[1]), "-o",
                                 str(tmp_path / "out.png"), "--debug"])

    assert result.exit_code != 0
    assert isinstance(result.exception, InputError)
    assert result.exc_info is not None and result.exc_info[2] is not None  # the traceback
    assert "error:" not in result.stderr


def test_interrupted_render_says_what_it_kept_then_the_resume_command_with_exit_130(
        monkeypatch: pytest.MonkeyPatch, inputs: tuple[Path, Path], tmp_path: Path) -> None:
    seen: list[RenderJob] = []

    def interrupted(job: RenderJob, sink: object = None) -> RenderResult:
        seen.append(job)
        raise Interrupted("interrupted during stage 2/3; stage 2 at iteration 57/300 kept in /w; the image so far: "
                          "/o.partial.png", "interrupted during stage 2/3", f"to continue, run: {job.resume_command}")

    monkeypatch.setattr(hires_nst.engine.render, "render", interrupted)
    result = runner.invoke(app, ["render", str(inputs[0]), str(inputs[1]), "-o", str(tmp_path / "o.png")])

    assert result.exit_code == 130
    said, advice = result.stderr.splitlines()
    assert said == ("interrupted during stage 2/3; stage 2 at iteration 57/300 kept in /w; the image so far: "
                    "/o.partial.png")  # "interrupted" once
    assert advice == f"to continue, run: {seen[0].resume_command}" and advice.endswith(" --resume")


def test_engine_bug_is_one_internal_error_line_with_exit_70(monkeypatch: pytest.MonkeyPatch,
                                                            inputs: tuple[Path, Path], tmp_path: Path) -> None:
    def broken(job: RenderJob, sink: object = None) -> RenderResult:
        raise KeyError("stage\nsecond line")

    monkeypatch.setattr(hires_nst.engine.render, "render", broken)
    result = runner.invoke(app, ["render", str(inputs[0]), str(inputs[1]), "-o", str(tmp_path / "o.png")])

    assert result.exit_code == 70
    [line] = result.stderr.splitlines()
    assert line.startswith("internal error: KeyError") and "--debug" in line


# --- info -------------------------------------------------------------------------------------------


def test_info_shows_torch_and_the_original_weights() -> None:
    result = runner.invoke(app, ["info"])

    assert result.exit_code == 0, result.output
    assert f"torch {torch.__version__}" in result.stdout
    assert "weights original:" in result.stdout


# --- a real render ----------------------------------------------------------------------------------


def test_tiny_render_writes_the_image_and_its_settings(tmp_path: Path, inputs: tuple[Path, Path]) -> None:
    out = tmp_path / "out" / "out.png"

    result = runner.invoke(app, ["render", str(inputs[0]), str(inputs[1]), "-o", str(out),
                                 "--max-size", "48", "--iterations", "3", "--quiet"])

    assert result.exit_code == 0, result.output
    with Image.open(out) as img:
        assert img.size == (48, 40)
    settings = json.loads(out.with_name("out.png.json").read_text())
    assert settings["config"]["pyramid"]["max_size"] == 48
    assert settings["config"]["pyramid"]["iterations"] == [3]
    # The work dir lies beside the output (absolute, so that --resume finds it from any folder).
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.png", "out.png.json", "out.png.trace.csv",
                                                            "out.png.work"]


def test_sigterm_saves_the_iteration_it_stopped_at_and_the_printed_command_resumes_from_there(
        tmp_path: Path) -> None:
    work, output = tmp_path / "work", tmp_path / "out.png"
    command = [str(CONTENT), str(STYLE), "-o", str(output), "--max-size", "64", "--min-size", "32",
               "--iterations", "100,2", "--tolerance", "0", "--optimizer", "adam",
               "--work-dir", str(work), "--quiet"]
    python = [sys.executable, "-m", "hires_nst"]
    process = subprocess.Popen([*python, "render", *command], stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                               env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 300
        while _trace_rows(work) < 3 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)  # as a scheduler would
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    said, advice = stderr.strip().splitlines()
    record = json.loads((work / "stage-0.partial.json").read_text())
    stopped = record["iteration"]
    assert stopped >= 3 and stopped == _trace_rows(work)  # the last iteration reported is the one saved
    assert said == (f"interrupted during stage 1/2; stage 1 at iteration {stopped}/100 kept in {work}; the image so "
                    f"far: {tmp_path / 'out.partial.png'} (stage 1/2, 32x24, iteration {stopped}/100)")
    assert advice.startswith("to continue, run: hires-nst render ") and advice.endswith(" --resume")

    resume = shlex.split(advice.removeprefix("to continue, run: "))[1:]  # without the installed script's name
    finished = subprocess.run([*python, *resume], stderr=subprocess.PIPE, text=True, cwd=tmp_path, timeout=600,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert finished.returncode == 0, finished.stderr
    rows = [row.split(",")[:4] for row in (tmp_path / "out.png.trace.csv").read_text().splitlines()[1:]]
    assert [(int(r[0]), int(r[3])) for r in rows] == [(0, i) for i in range(1, 101)] + [(1, i) for i in range(1, 3)]
    assert output.is_file() and not (tmp_path / "out.partial.png").exists()


def _trace_rows(work: Path) -> int:
    try:
        return len((work / "trace.csv").read_text().splitlines()) - 1
    except OSError:
        return 0
