"""Devices and memory: which device runs the network, and what a stage will cost in memory."""

from __future__ import annotations

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


def estimate_stage_bytes(width: int, height: int, bytes_per_value: int = 4) -> int:
    """Rough peak memory of one untiled VGG19 forward+backward at this size, in bytes."""
    image_state = 3 * 4 * 4  # image, gradient, optimiser state (fp32, a few copies)
    per_pixel = ACTIVATIONS_PER_PIXEL * bytes_per_value * BACKWARD_FACTOR + image_state
    return int(width * height * per_pixel)


def describe_devices() -> list[dict[str, object]]:
    """The devices on this machine with their memory, for ``hires-nst info``."""
    devices: list[dict[str, object]] = [{"name": "cpu", "threads": torch.get_num_threads()}]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        devices.append({"name": f"cuda:{index}", "model": props.name, "memory_gb": round(total / 2**30, 1),
                        "free_gb": round(free / 2**30, 1)})
    return devices
