"""What every ``hires-nst`` command shares: the typer app, the error console and one-line errors,
and SIGTERM as Ctrl-C. ``cli`` and ``cli_jobs`` register their commands on ``app``."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import typer
from rich.console import Console
from rich.markup import escape

from hires_nst.cli.help import PlainGroup
from hires_nst.errors import Interrupted, classify

app = typer.Typer(
    name="hires-nst", no_args_is_help=True, cls=PlainGroup, pretty_exceptions_enable=False, add_completion=False,
    help="Print-size neural style transfer (Gatys et al.) over a resolution pyramid.",
)
err_console = Console(stderr=True, highlight=False)


def say_error(prefix: str, message: object) -> None:
    """One line on stderr, however long the message and whatever brackets (paths!) it holds."""
    text = " ".join(str(message).split("\n"))
    err_console.print(f"[red]{prefix}:[/] {escape(text)}", soft_wrap=True)


def say_line(text: str) -> None:
    """A plain line on stderr (no markup: paths hold brackets)."""
    err_console.print(text, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def reporting(debug: bool) -> Iterator[None]:
    """Turn failures into one line and an exit code (``errors.classify``); tracebacks only with --debug
    (never for an interruption or the host running out of memory: those are not bugs to trace)."""
    try:
        yield
    except (KeyboardInterrupt, Exception) as exc:
        failure = classify(exc)
        if debug and failure.status != "interrupted" and not isinstance(exc, MemoryError):
            raise
        if isinstance(exc, Interrupted):  # "interrupted during ...": what was kept, then how to go on
            say_interrupted(exc)
        elif failure.status == "interrupted":
            err_console.print("[yellow]interrupted[/]", soft_wrap=True)
        elif failure.bug:
            say_error("internal error", f"{failure.message} (run with --debug for details)")
        else:
            say_error("error", failure.message)
        raise typer.Exit(failure.exit_code) from None


def say_interrupted(exc: Interrupted) -> None:
    """What the engine kept (and the image so far), then the command that goes on, on a line of its
    own that a terminal does not wrap, ready to copy."""
    err_console.print(f"[yellow]{escape(exc.said)}[/]", soft_wrap=True)
    if exc.advice:
        say_line(exc.advice)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler, ``kill``) stops a render like Ctrl-C: finished stages are kept."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
