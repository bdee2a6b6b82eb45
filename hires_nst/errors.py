"""The one error hierarchy of the engine. Only the CLI catches these."""


class HiresNSTError(Exception):
    """Base of every error the engine raises on purpose; the CLI shows its message as one line."""


class ConfigError(HiresNSTError):
    """A setting is missing, unknown, out of range or of the wrong type."""


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

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail or message  # what was kept, without the advice (a batch gives its own)


class DiskFullError(OutputError):
    """A write found no room (ENOSPC, EDQUOT): worth retrying once space is freed, unlike other write errors."""
