"""The ``presets`` and ``batch`` commands (registered on ``cli_common.app``; ``cli`` imports this module)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hires_nst.cli.common import app, err_console, reporting, say_line, sigterm_as_interrupt
from hires_nst.cli.help import PlainCommand, PlainGroup
from hires_nst.errors import EXIT_ERROR, EXIT_INTERRUPTED, ConfigError
from hires_nst.events import Event, Sink, null_sink
from hires_nst.io.logprogress import LogProgress

if TYPE_CHECKING:
    from hires_nst.batch.run import BatchResult, Runner

presets_app = typer.Typer(cls=PlainGroup, help="List the built-in presets, or show one's resolved settings.",
                          invoke_without_command=True, no_args_is_help=False)
app.add_typer(presets_app, name="presets")


@presets_app.callback()
def presets(ctx: typer.Context) -> None:
    """List the built-in presets with their output size and a one-line description."""
    if ctx.invoked_subcommand is not None:
        return
    from hires_nst.config.presets import builtin_presets, output_size

    with reporting(debug=False):
        rows = [(p.name, output_size(p.config()), p.description) for p in builtin_presets()]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        console = Console(highlight=False, markup=False, soft_wrap=True)
        for name, size, description in rows:
            console.print(f"{name:<{widths[0]}}  {size:<{widths[1]}}  {description}")


@presets_app.command("show", cls=PlainCommand)
def presets_show(
    name: Annotated[str, typer.Argument(help="A built-in preset name, or a path to a preset .toml file.",
                                        show_default=False)],
) -> None:
    """Print a preset's resolved settings as TOML (values the preset sets are marked)."""
    from hires_nst.config.presets import load_preset, output_size, to_toml

    with reporting(debug=False):
        preset = load_preset(name)
        config = preset.config()
        console = Console(highlight=False, markup=False, soft_wrap=True)
        console.print(f"# {preset.name}: {preset.description}\n# file: {preset.path}\n"
                      f"# output: {output_size(config)}\n")
        console.print(to_toml(config, preset.layer), end="")


@contextlib.contextmanager
def batch_sink(quiet: bool) -> Iterator[Sink]:
    if quiet:
        yield null_sink
        return
    if not err_console.is_terminal:  # a log file: plain lines (logprogress.py), bars would print nothing
        yield LogProgress(say_line)
        return
    from hires_nst.cli.progress import BatchDisplay

    with BatchDisplay(err_console) as display:
        def sink(event: Event) -> None:
            display(event)

        yield sink


@app.command(cls=PlainCommand)
def batch(
    jobs: Annotated[Path, typer.Argument(help="The job file (TOML): \\[\\[job]] and \\[\\[grid]] entries.",
                                         show_default=False)],
    output_dir: Annotated[Path | None, typer.Option("--output-dir", help="Where outputs, work dirs and "
                          "manifest.json go; default: the job file's output_dir, or <job file>-out beside it.",
                          show_default=False)] = None,
    devices: Annotated[str | None, typer.Option("--devices", help="Run jobs in parallel, one worker "
                       "process per device, e.g. cuda:0,cuda:1 (default: one job at a time).",
                       show_default=False)] = None,
    restart: Annotated[bool, typer.Option("--restart", help="Discard the checkpoints of unfinished jobs "
                                          "instead of resuming them.")] = False,
    cluster: Annotated[str | None, typer.Option("--cluster", help="Run every job as a task on a Ray cluster: "
                       "ray://HEAD:10001 (Ray Client), HEAD:6379 or auto (this machine is a node), local (a Ray "
                       "instance here). The output folder and inputs must be on a filesystem every node shares.",
                       show_default=False)] = None,
    gpus_per_job: Annotated[float | None, typer.Option("--gpus-per-job", help="With --cluster: GPUs per job "
                            "(default 1 where the cluster has GPUs, else 0: CPUs only).", show_default=False)] = None,
    cpus_per_job: Annotated[int | None, typer.Option("--cpus-per-job", help="With --cluster: CPUs per job "
                            "(default 1; on a cluster without GPUs also the job's torch threads).",
                            show_default=False)] = None,
    max_retries: Annotated[int, typer.Option("--max-retries", help="With --cluster: how often Ray runs a job again "
                           "when its worker or node dies; each retry resumes from the job's last checkpoint.")] = 3,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
) -> None:
    """Run the renders of a job file; re-running it skips finished jobs and resumes unfinished ones."""
    from hires_nst.batch.jobs import load_batch
    from hires_nst.batch.run import run_batch

    with reporting(debug):
        loaded = load_batch(jobs, output_dir)
        device_list = [d.strip() for d in (devices or "").split(",") if d.strip()]
        with _cluster(cluster, device_list, gpus_per_job, cpus_per_job, max_retries) as runner, \
                sigterm_as_interrupt(), batch_sink(quiet) as sink:
            result = run_batch(loaded, sink, device_list, restart=restart, runner=runner)
        _summary(result)
    if result.stopped:
        err_console.print(f"[yellow]{escape(result.stopped)}[/]", soft_wrap=True)  # "batch interrupted during ..."
        raise typer.Exit(EXIT_INTERRUPTED)
    if result.failed:
        err_console.print(f"[red]{len(result.failed)} job(s) failed[/]; see the table, the manifest and "
                          "each job's log", soft_wrap=True)
        raise typer.Exit(EXIT_ERROR)


@contextlib.contextmanager
def _cluster(address: str | None, devices: list[str], gpus_per_job: float | None, cpus_per_job: int | None,
             max_retries: int) -> Iterator[Runner | None]:
    """The Ray runner for --cluster (connected before anything is written), or None for a local batch."""
    if address is None:
        if gpus_per_job is not None or cpus_per_job is not None:
            raise ConfigError("--gpus-per-job and --cpus-per-job need --cluster")
        yield None
        return
    if devices:
        raise ConfigError("--devices and --cluster exclude each other: on a cluster Ray picks each job's device")
    from hires_nst.batch.cluster import connect

    with connect(address, gpus_per_job, cpus_per_job, max_retries) as runner:
        yield runner


def _summary(result: BatchResult) -> None:
    table = Table(title="batch summary", title_justify="left", box=None, header_style="bold")
    for column in ("job", "status", "size", "time", "note"):
        table.add_column(column, overflow="fold")
    colours = {"finished": "green", "failed": "red", "interrupted": "yellow", "pending": "dim"}
    for o in result.outcomes:
        size = f"{o.width}x{o.height}" if o.width else ""
        seconds = f"{o.seconds:.1f}s" if o.seconds else ""
        note = o.error or ("done in an earlier run" if o.skipped else
                           f"{o.stages_reused} stage(s) reused" if o.stages_reused else "")
        table.add_row(escape(o.name), f"[{colours.get(o.status, 'white')}]{o.status}[/]", size, seconds, escape(note))
    console = Console(highlight=False, soft_wrap=True)
    console.print(table)
    console.print(f"manifest: {escape(str(result.manifest))}")
    for sheet in result.sheets:
        console.print(f"contact sheet: {escape(str(sheet))}")
