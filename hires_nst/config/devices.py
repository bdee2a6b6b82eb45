"""Device names as the settings hold them (``--device``, ``--devices``, ``batch --devices``), read once.

No torch here: ``settings.validate`` checks the names when the config is resolved, so a typo is a
usage error (exit 2) before any work; ``placement.resolve_devices`` then asks this machine whether
it has them (CUDA present, the index in range, enough cores), and a batch reads each worker's
name once (``batch.parallel``). The names are those torch accepts for the two kinds the renderer
runs on: ``cpu``, ``cuda`` (the current CUDA device) and ``cuda:N`` (``cpu:N`` is the CPU too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hires_nst.errors import ConfigError

AUTO = "auto"  # --device: CUDA if present, else the CPU
ALL = "all"  # --devices: every CUDA device
NAMES = "cpu, cuda or cuda:N"
_NAME = re.compile(r"(cpu|cuda)(?::(0|[1-9][0-9]*))?")  # torch.device's own syntax for these kinds


@dataclass(frozen=True)
class DeviceName:
    """One device as named: ``type`` (as ``torch.device.type``: cpu or cuda) and ``index``
    (None: the current CUDA device, or the CPU)."""

    type: str
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


def device_name(text: str, flag: str, names: str = NAMES) -> DeviceName:
    """``text`` as a device name; ConfigError naming ``flag`` (and the ``names`` it takes) if it is none."""
    match = _NAME.fullmatch(text)
    if match is None:
        raise ConfigError(f"{flag}: unknown device {text!r}; use {names}")
    return DeviceName(match[1], None if match[2] is None else int(match[2]))


def single_device(text: str, flag: str = "--device") -> DeviceName | None:
    """``--device``: None for ``auto`` (this machine decides), else its name."""
    return None if text == AUTO else device_name(text, flag, f"{AUTO}, {NAMES}")


def device_list(text: str, flag: str = "--devices") -> tuple[DeviceName, ...] | None:
    """``--devices``: () when empty (the one ``--device``), None for ``all`` (how many CUDA devices
    there are is this machine's to say), else the comma list's names: one kind of device, no
    CUDA device named twice (``cpu,cpu`` is two CPU ranks)."""
    spec = text.strip()
    if not spec:
        return ()
    if spec == ALL:
        return None
    parts = [part.strip() for part in spec.split(",")]
    if not all(parts):
        raise ConfigError(f"{flag} {spec}: empty device name; use e.g. cuda:0,cuda:1 or all")
    names = tuple(device_name(part, flag) for part in parts)
    if len({name.type for name in names}) > 1:
        raise ConfigError(f"{flag} {spec}: mixes CPU and CUDA devices; use one kind")
    indexed = [name for name in names if name.type == "cuda" and name.index is not None]
    if len(set(indexed)) < len(indexed):
        raise ConfigError(f"{flag} {spec}: a CUDA device is listed twice")
    return names
