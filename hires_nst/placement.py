"""Devices and memory: which device runs the network, and what a stage will cost in memory."""

from __future__ import annotations

import os
import resource
import sys

import torch

from hires_nst.errors import DeviceError

# Activations kept for the backward pass of VGG19 up to conv5_1, in values per input pixel:
# conv1 block 2x64, pool 64/4, conv2 2x128/4, pool 128/16, conv3 4x256/16, pool 256/64,
# conv4 4x512/64, pool 512/256, conv5_1 512/256 (DESIGN.md section 5).
ACTIVATIONS_PER_PIXEL = 128 + 16 + 64 + 8 + 64 + 4 + 32 + 2 + 2
BACKWARD_FACTOR = 2.0  # gradients of the largest activations live alongside them during backward


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA if present, else CPU; anything else is checked against this machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise DeviceError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def activation_bytes(width: int, height: int, bytes_per_value: int = 4) -> int:
    """Rough peak memory of one VGG19 forward+backward over a ``width`` x ``height`` window."""
    return int(width * height * ACTIVATIONS_PER_PIXEL * bytes_per_value * BACKWARD_FACTOR)


def estimate_stage_bytes(width: int, height: int, tile: int | None = None, halo: int = 0) -> int:
    """Peak memory of one iteration: full-image buffers plus the network on one window."""
    window_w = width if tile is None else min(width, tile + 2 * halo)
    window_h = height if tile is None else min(height, tile + 2 * halo)
    return width * height * FULL_IMAGE_BYTES_PER_PIXEL + activation_bytes(window_w, window_h)


# Full-image fp32 buffers besides the network: image, gradient, optimiser state (a few copies),
# the conv4_2 content target (512 channels / 64 positions = 8 values per pixel).
FULL_IMAGE_BYTES_PER_PIXEL = 3 * 4 * 6 + 8 * 4
MEMORY_MARGIN = {"cuda": 0.8, "cpu": 0.6}  # of the free memory measured at stage start
MIN_TILE = 64


def available_bytes(device: torch.device) -> int:
    """Free memory where the network runs: CUDA's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as handle:
            fields = dict(line.split(":", 1) for line in handle)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def auto_tile_size(width: int, height: int, halo: int, budget: int, align: int = 16) -> int | None:
    """The largest tile side whose window fits ``budget`` bytes; None when the whole image fits.

    Full-image buffers (image, gradient, optimiser state, targets) are paid first; then the
    network's activations scale with one window, (tile + 2 halo)^2 at most.
    """
    if estimate_stage_bytes(width, height) <= budget:
        return None
    tile = (max(width, height) // align) * align
    while tile > MIN_TILE:
        if estimate_stage_bytes(width, height, tile, halo) <= budget:
            return tile
        tile = max(MIN_TILE, (tile * 3 // 4) // align * align)
    return MIN_TILE


def describe_devices() -> list[dict[str, object]]:
    """The devices on this machine with their memory, for ``hires-nst info``."""
    devices: list[dict[str, object]] = [{"name": "cpu", "threads": torch.get_num_threads()}]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        devices.append({"name": f"cuda:{index}", "model": props.name, "memory_gb": round(total / 2**30, 1),
                        "free_gb": round(free / 2**30, 1)})
    return devices


def reset_peak_memory(device: torch.device) -> None:
    """Start a new CUDA peak (per stage); the CPU's peak RSS cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the most memory tensors took since ``reset_peak_memory``; CPU: the process's peak RSS."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux
