"""The one error hierarchy of the engine, and ``classify``: what any failure means to the user.

Only the CLI (and a batch, for each of its jobs) catches these."""

from __future__ import annotations

from typing import NamedTuple


class HiresNSTError(Exception):
    """Base of every error the engine raises on purpose; the CLI shows its message as one line."""


class ConfigError(HiresNSTError):
    """A setting is missing, unknown, out of range or of the wrong type.

    The message speaks the command line's words (``--max-size (pyramid.max_size) must be ...``).
    When one setting is at fault it also says which, so that another caller can word it in its own
    terms (``stylize()``: ``max_size must be ...``): ``setting`` its name, ``problem`` what is wrong
    with it (``must be at least 16 pixels, got 8``), ``source`` where the value came from if known.
    """

    def __init__(self, message: str, *, setting: str = "", problem: str = "", source: str = "") -> None:
        super().__init__(message)
        self.setting, self.problem, self.source = setting, problem, source


class InputError(HiresNSTError):
    """An input file (image, weights, preset, job file) is missing or unreadable."""


class WeightsError(HiresNSTError):
    """Model weights cannot be had from the chosen source, or do not fit the network."""


class OutputError(HiresNSTError):
    """An output cannot be written where the user asked."""


class DeviceError(HiresNSTError):
    """The requested device or precision is not available here."""


class NumericalError(HiresNSTError):
    """The optimisation produced a non-finite loss."""


class Interrupted(HiresNSTError):
    """The user stopped the render (Ctrl-C, SIGTERM); finished stages are kept for --resume."""

    def __init__(self, message: str, detail: str = "", advice: str = "") -> None:
        super().__init__(f"{message}; {advice}" if advice else message)
        self.said = message  # where it stopped, what was kept and where, without the advice
        self.detail = detail or message  # what was kept, without paths or advice (a batch gives its own)
        self.advice = advice  # how to go on ("to continue, run: ..."), its own line in a terminal


class DiskFullError(OutputError):
    """A write found no room (ENOSPC, EDQUOT): worth retrying once space is freed, unlike other write errors."""


# --------------------------------------------------------------------------- classifying failures

EXIT_ERROR, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 1, 2, 70, 130  # EXIT_USAGE: a setting is wrong (as click's)
# What torch's allocators say when memory runs out, besides torch.OutOfMemoryError: the CPU
# allocator, and cuBLAS / cuDNN failing to allocate their workspaces (a RuntimeError each).
OUT_OF_MEMORY_MARKS = ("out of memory", "can't allocate memory", "CUBLAS_STATUS_ALLOC_FAILED",
                       "CUDNN_STATUS_ALLOC_FAILED")


class Failure(NamedTuple):
    """What a failed render means for whoever ran it."""

    status: str  # "interrupted" or "failed" (a batch's job status)
    message: str  # one line; for a bug, "Type: first line" (the caller says where the traceback is)
    exit_code: int  # EXIT_ERROR, EXIT_USAGE, EXIT_BUG or EXIT_INTERRUPTED
    out_of_memory: bool = False

    @property
    def bug(self) -> bool:
        return self.exit_code == EXIT_BUG


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (without importing torch), MemoryError, or an allocator's RuntimeError."""
    if isinstance(exc, MemoryError) or (type(exc).__name__ == "OutOfMemoryError"
                                        and type(exc).__module__.split(".")[0] == "torch"):
        return True
    return isinstance(exc, RuntimeError) and any(mark in str(exc) for mark in OUT_OF_MEMORY_MARKS)


def classify(exc: BaseException) -> Failure:
    """The one mapping from an exception to a status, a one-line message and an exit code.

    Used by the CLI (``render``, ``batch``), by each batch job and by the out-of-memory retry of a
    stage, so that all of them agree on what counts as running out of memory and what to advise.
    """
    if isinstance(exc, Interrupted):
        return Failure("interrupted", " ".join(str(exc).split("\n")), EXIT_INTERRUPTED)
    if isinstance(exc, KeyboardInterrupt):
        return Failure("interrupted", "interrupted", EXIT_INTERRUPTED)
    if isinstance(exc, HiresNSTError):
        code = EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_ERROR
        return Failure("failed", " ".join(str(exc).split("\n")), code)
    if is_out_of_memory(exc):
        detail = first_line(exc)
        where = "memory" if isinstance(exc, MemoryError) or "can't allocate" in detail else "device memory"
        return Failure("failed", f"out of {where}{f' ({detail})' if detail else ''}; try a smaller --max-size",
                       EXIT_ERROR, out_of_memory=True)
    return Failure("failed", f"{type(exc).__name__}: {first_line(exc)}", EXIT_BUG)
