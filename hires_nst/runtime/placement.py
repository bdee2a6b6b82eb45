"""Devices, precision and memory: where and how the network runs, and what a stage will cost.

A render's devices and number formats are decided here, once per render: ``resolve_devices``
(``--device``/``--devices`` against this machine; their names were read by ``config.devices`` when
the config was resolved), ``resolve_precision`` (``--precision``) and ``place`` (one feature
extractor replica per device). The rest of the engine only calls ``Precision.features`` around the
network and ``LossScale.run`` around the backward pass. Devices are also chosen outside: under
torchrun each rank takes ``cuda:LOCAL_RANK`` (``ranks.join_from_env``), a parallel batch pins
each worker to its GPU (``batch.parallel.pin_device``), and on a Ray cluster the task's resources
set the job's ``--device`` (``batch.cluster_task``).

Over 300 lines on purpose: device, precision and memory queries answer one question: where and how a stage runs.
"""

from __future__ import annotations

import contextlib
import copy
import os
import resource
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch import Tensor, nn

from hires_nst.config.catalog import PRECISIONS
from hires_nst.config.devices import AUTO, DeviceName, device_list, single_device
from hires_nst.core import memmodel
from hires_nst.core.tiles import Tile
from hires_nst.errors import ConfigError, DeviceError
from hires_nst.io.images import host_available_bytes
from hires_nst.runtime.ranks import World, single

# The extractor a placement holds: a module (placement moves and copies it), the engine's
# FeatureExtractor in a render.
Extractor = TypeVar("Extractor", bound=nn.Module)


def resolve_device(name: str | DeviceName | None = AUTO, flag: str = "--device") -> torch.device:
    """``auto`` (or None) -> CUDA if present, else CPU; a device's name (read by ``config.devices``,
    or read here) is checked against this machine."""
    spec = single_device(name, flag) if isinstance(name, str) else name
    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{flag} {spec}: CUDA is not available on this machine; use --device cpu")
        if spec.index is not None and spec.index >= torch.cuda.device_count():
            raise DeviceError(f"{flag} {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(str(spec))


def resolve_devices(devices: str = "", device: str = AUTO) -> tuple[torch.device, ...]:
    """``--devices``: empty -> the one ``--device``; ``all`` -> every CUDA device; else a comma list
    (its names read by ``config.devices.device_list``, which the config's validation ran already).

    The first device is the main one: it holds the image, its gradient and the optimiser state.
    ``cpu,cpu`` gives two CPU replicas: no faster, but it runs the multi-device logic without GPUs.
    """
    spec, names = devices.strip(), device_list(devices)
    if names == ():
        return (resolve_device(device),)
    if names is None:
        if not torch.cuda.is_available():
            raise DeviceError("--devices all: CUDA is not available on this machine; use --device cpu")
        return tuple(torch.device("cuda", i) for i in range(torch.cuda.device_count()))
    resolved = [resolve_device(n, "--devices") for n in names]
    resolved = [torch.device("cuda", torch.cuda.current_device()) if d.type == "cuda" and d.index is None else d
                for d in resolved]
    cuda = [d for d in resolved if d.type == "cuda"]
    if len(set(cuda)) < len(cuda):  # cuda and cuda:N can be one device: only this machine knows
        raise DeviceError(f"--devices {spec}: a CUDA device is listed twice")
    check_cpu_ranks(resolved, f"--devices {spec}")
    return tuple(resolved)


MIN_CPU_RANKS = 2  # cpu,cpu runs the multi-device logic on any machine (the tests do)


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the system says)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_cpu_ranks(devices: Sequence[torch.device | str], what: str) -> None:
    """One process per CPU entry, each with its own network: more of them than cores only share the
    same cores (slower) and multiply the memory, so that is refused."""
    cpus = sum(1 for d in devices if torch.device(d).type == "cpu")
    most = max(MIN_CPU_RANKS, usable_cores())
    if cpus > most:
        raise DeviceError(f"{what}: {cpus} CPU ranks on a machine with {usable_cores()} core(s); each is a process "
                          f"with its own copy of the network: list at most {most} (one cpu is the fastest)")


# --------------------------------------------------------------------------- precision

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _supports_bf16(device: torch.device) -> bool:
    """Native bf16 arithmetic: Ampere or later on CUDA; AVX512-BF16 or AMX on a CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    cpu = torch.cpu
    return any(bool(getattr(cpu, check, lambda: False)()) for check in ("_is_avx512_bf16_supported",
                                                                          "_is_amx_tile_supported"))


class LossScale:
    """Dynamic loss scaling for fp16 (as ``torch.amp.GradScaler``, for an input gradient).

    fp16 gradients below ~6e-8 flush to zero, and ours are small (losses are means over millions of
    positions). The backpropagated quantity is multiplied by ``scale`` and the input gradient divided
    by it; on inf/NaN the scale halves and the evaluation runs again, and after ``growth_interval``
    good evaluations it doubles. Scales are powers of two, so scaling itself is exact.
    """

    def __init__(self, enabled: bool, initial: float = 2.0**16, growth_interval: int = 100) -> None:
        self.enabled, self.scale, self.growth_interval = enabled, initial if enabled else 1.0, growth_interval
        self.good_steps, self.overflows = 0, 0

    def run(self, backward: Callable[[float], Tensor]) -> Tensor:
        """``backward(scale)`` must return the *unscaled* input gradient; returns the first finite one.

        Disabled (fp32, bf16): one call with scale 1 and no host-device synchronisation.
        """
        if not self.enabled:
            return backward(1.0)
        while True:
            grad = backward(self.scale)
            if bool(torch.isfinite(grad).all()):
                self.good_steps += 1
                if self.good_steps % self.growth_interval == 0:
                    self.scale *= 2.0
                return grad
            self.overflows += 1
            self.good_steps = 0
            if self.scale <= 1.0:  # not an overflow of the scaling: the optimiser's check reports it
                return grad
            self.scale /= 2.0


@dataclass(frozen=True)
class Precision:
    """How the network runs (DESIGN.md 7): fp32, or bf16/fp16 autocast, optionally channels-last.

    Only the VGG forward (and so its backward) runs in the low precision. The image, Gram matrices,
    losses and optimiser state stay fp32: ``features`` leaves autocast before returning, and the
    loss code widens the features before any sum (``losses.gram_sum``).
    """

    name: str = "fp32"
    channels_last: bool = False

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES.get(self.name, torch.float32)

    def memory_precision(self, device: torch.device) -> str:
        """The precision whose measured memory figures (``memmodel``) size tiles on ``device``.

        A CPU keeps the fp32 figures: there bf16 measured 0.75x the fp32 peak at 1024 px, not 0.5x
        (oneDNN keeps reordered copies), so bf16 figures would pick tiles that do not fit.
        """
        return self.name if device.type == "cuda" else "fp32"

    def low_precision_products(self, device: torch.device) -> bool:
        """Multiply bf16/fp16 features as they are, summing in fp32 (``losses.gram_sum``): on CUDA,
        where cuBLAS does that on tensor cores. A CPU widens them to fp32 first, as before."""
        return self.name != "fp32" and device.type == "cuda"

    def prepare(self, extractor: Extractor) -> Extractor:
        """The extractor's weights in the memory format its inputs will have (in place)."""
        return extractor.to(memory_format=torch.channels_last) if self.channels_last else extractor

    @contextlib.contextmanager
    def autocast(self, device: torch.device) -> Iterator[None]:
        if self.name == "fp32":
            yield
            return
        with torch.autocast(device.type, dtype=self.dtype):
            yield

    def features(self, extractor: Callable[..., dict[str, Any]], image: Tensor,
                 reduce: Callable[[str, Tensor], Any] | None = None) -> dict[str, Any]:
        """``extractor(image)`` under this precision. (1, 3, H, W) fp32 -> {layer: (1, C, h, w)} in
        the compute dtype (bf16/fp16 under autocast, which ends here: widen before summing).

        ``reduce(layer, features)``: taken at each layer as the network runs (``FrozenExtractor``),
        outside autocast (a Gram under autocast would be a bf16 matmul); its results are returned.
        """
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        with self.autocast(image.device):
            if reduce is None:
                return extractor(image)
            if self.name == "fp32":
                return extractor(image, reduce=reduce)

            def outside(name: str, feats: Tensor) -> Any:
                with torch.autocast(image.device.type, enabled=False):
                    return reduce(name, feats)
            return extractor(image, reduce=outside)

    def loss_scale(self) -> LossScale:
        """A fresh dynamic loss scale: active for fp16 only."""
        return LossScale(enabled=self.name == "fp16")

    def describe(self) -> str:
        return self.name + (", channels-last" if self.channels_last else "")


FP32 = Precision()
# Channels-last for every precision: on the 2-core dev CPU (benchmarks/speed.py) it made bf16
# 1.2-1.6x and fp32 1.02-1.24x faster than NCHW, and it is the layout cuDNN's tensor cores want.
CHANNELS_LAST = True


def resolve_precision(name: str, devices: Sequence[torch.device]) -> Precision:
    """``--precision`` for these devices. ``auto``: bf16 where every device does bf16 natively, else fp32."""
    if name not in PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    if name == "auto":
        name = "bf16" if all(_supports_bf16(d) for d in devices) else "fp32"
    if name == "fp16" and any(d.type != "cuda" for d in devices):
        raise DeviceError("--precision fp16 needs CUDA devices (a CPU has no fast fp16 convolutions); "
                          "use --precision bf16 or fp32 on a CPU")
    if name == "bf16":
        old = [str(d) for d in devices if d.type == "cuda" and not _supports_bf16(d)]
        if old:
            raise DeviceError(f"--precision bf16: {', '.join(old)} has no bf16 support (needs compute capability "
                              "8.0 or later); use --precision fp16 or fp32")
    return Precision(name, channels_last=CHANNELS_LAST)


# --------------------------------------------------------------------------- placement


@dataclass(frozen=True)
class Placement(Generic[Extractor]):
    """Where this process renders: its device's extractor, in one precision, and its place among the
    ranks of the render (``world``; one rank unless several devices or torchrun share the render).

    ``devices[0]`` is this process's device: the image, its gradient and the optimiser state live there.
    """

    replicas: tuple[Extractor, ...]
    devices: tuple[torch.device, ...]
    precision: Precision = FP32
    sync_every: int = 1  # read losses back (progress, finite checks) every N iterations
    world: World = None  # type: ignore[assignment]  # None: this device alone

    def __post_init__(self) -> None:
        if self.world is None:
            object.__setattr__(self, "world", single(self.devices[0]))

    @property
    def main(self) -> torch.device:
        return self.devices[0]

    @property
    def extractor(self) -> Extractor:
        return self.replicas[0]

    def describe(self) -> str:
        devices = self.world.describe() if self.world.distributed else ", ".join(str(d) for d in self.devices)
        return f"{devices} ({self.precision.describe()})"

    @classmethod
    def single(cls, extractor: Extractor, device: torch.device | str = "cpu",
               precision: Precision = FP32) -> Placement[Extractor]:
        """One extractor on one device (fp32 unless told): what tests and benchmarks run on."""
        return place(extractor, (torch.device(device),), precision)


def default_sync_every(devices: Sequence[torch.device], setting: int = 0) -> int:
    """``--sync-every``, 0 meaning: every iteration on a CPU (a sync costs nothing there), every 10 on CUDA."""
    if setting > 0:
        return setting
    return 10 if any(d.type == "cuda" for d in devices) else 1


def place(extractor: Extractor, devices: Sequence[torch.device], precision: Precision = FP32,
          sync_every: int = 1, world: World | None = None) -> Placement[Extractor]:
    """One replica of ``extractor`` per device (the first is ``extractor`` itself, moved)."""
    if not devices:
        raise DeviceError("no device to run on")
    replicas = [precision.prepare(extractor.to(devices[0]))]
    replicas += [precision.prepare(copy.deepcopy(extractor).to(d)) for d in devices[1:]]
    if any(d.type == "cuda" for d in devices):
        # Fixed input shapes (a few tile sizes per stage): let cuDNN time its algorithms once.
        torch.backends.cudnn.benchmark = True
    return Placement(tuple(replicas), tuple(devices), precision, sync_every,
                     single(devices[0]) if world is None else world)  # as __post_init__ would


def estimate_stage_bytes(width: int, height: int, tile: int | None = None, halo: int = 0, align: int = 16, *,
                         precision: str = "fp32", optimizer: str = "lbfgs",
                         layers: Iterable[str] = memmodel.DEFAULT_LAYER_SET, style_loss: str = "w2",
                         average: bool = False, regions: int = 0, tiles: Sequence[Tile] | None = None) -> int:
    """Peak memory of one stage: whole-image buffers, optimiser state and one window (``memmodel``;
    ``tiles``: the stage's windows when the caller has them)."""
    return memmodel.estimate(width, height, tile, halo, align, precision=precision, optimizer=optimizer,
                             layers=layers, style_loss=style_loss, average=average, regions=regions, tiles=tiles)


MEMORY_MARGIN = {"cuda": 0.8, "cpu": 0.6}  # of the free memory measured at stage start


def available_bytes(device: torch.device) -> int:
    """Free memory where the network runs: CUDA's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return host_available_bytes()


def auto_tile_size(width: int, height: int, halo: int, budget: int, align: int = 16, *,
                   precision: str = "fp32", optimizer: str = "lbfgs",
                   layers: Iterable[str] = memmodel.DEFAULT_LAYER_SET, style_loss: str = "w2",
                   average: bool = False, regions: int = 0) -> int | None:
    """The tile side whose stage fits ``budget`` bytes by the measured model; None when the whole
    image fits (``memmodel.plan_tile``: the fewest tiles, balanced)."""
    return memmodel.plan_tile(width, height, halo, budget, align, precision=precision, optimizer=optimizer,
                              layers=layers, style_loss=style_loss, average=average, regions=regions)


def describe_devices() -> list[dict[str, object]]:
    """The devices on this machine with their memory, for ``hires-nst info``."""
    devices: list[dict[str, object]] = [{"name": "cpu", "threads": torch.get_num_threads(),
                                         "bf16": _supports_bf16(torch.device("cpu"))}]
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        devices.append({"name": f"cuda:{index}", "model": props.name, "memory_gb": round(total / 2**30, 1),
                        "free_gb": round(free / 2**30, 1), "bf16": _supports_bf16(torch.device("cuda", index))})
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
