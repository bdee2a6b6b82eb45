"""One render over several processes: one rank per device, torch.distributed between them.

Why processes and not threads: each window dispatches a few hundred small ops, and threads of one
process serialise them on the GIL; processes do not, and they can sit on several machines.

Two ways in:

* ``--devices cuda:0,cuda:1`` (or ``cpu,cpu``, or ``all``): ``launch`` runs rank 0 in this process,
  so the progress display, the files and the exit code stay where they were, and spawns one
  process per further device; they meet on a free localhost port.
* ``torchrun --nnodes N --nproc-per-node G -m hires_nst render ...``: torchrun started every
  process and set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``;
  ``join_from_env`` reads them and each rank takes ``cuda:LOCAL_RANK``.

Backend NCCL on CUDA, gloo on CPU. Rank 0 does all I/O; other ranks are silent. Every collective
has a timeout (``HIRES_NST_RANK_TIMEOUT`` seconds, 600 by default: longer than any checkpoint
write that the others wait through), so a rank that hangs stops the others; one that dies closes
its sockets and stops them at once. The launcher then names it in one ``RankError``.

Over 300 lines on purpose: launching, joining and talking between ranks share one World type.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import queue
import signal
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from hires_nst.config.devices import single_device
from hires_nst.errors import DeviceError, HiresNSTError

T = TypeVar("T")

TIMEOUT_ENV = "HIRES_NST_RANK_TIMEOUT"
DEFAULT_TIMEOUT = 600.0
JOIN_TIMEOUT = 180.0  # spawning a rank and importing torch: tens of seconds on a loaded CPU
GRACE_SECONDS = 5.0  # how long the launcher waits for a failed rank's last word, and for a stopped one to exit
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class RankError(DeviceError):
    """Another rank died, failed or stopped answering; the message names it when it can."""


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one render."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    devices: tuple[str, ...] = ()  # every rank's device (as far as this machine knows), for reports
    local_size: int = 1  # ranks on this machine (CPU ranks share its memory)

    @property
    def main(self) -> bool:
        """Rank 0: the one that reports, writes files and decides for the others."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def describe(self) -> str:
        return ", ".join(self.devices) if self.devices else str(self.device)


def single(device: torch.device) -> World:
    """The world of a render on one device: every collective below is a no-op in it."""
    return World(0, 1, device, (str(device),))


def timeout_seconds() -> float:
    value = os.environ.get(TIMEOUT_ENV, "")
    try:
        return float(value) if value else DEFAULT_TIMEOUT
    except ValueError:
        raise DeviceError(f"{TIMEOUT_ENV}={value!r}: expected a number of seconds") from None


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


# --------------------------------------------------------------------------- collectives


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn the backends' errors (a closed socket, a timeout, an NCCL abort) into ``RankError``."""
    try:
        yield
    except HiresNSTError:
        raise
    except (RuntimeError, dist.DistError) as exc:  # DistBackendError and friends are RuntimeErrors too
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RankError(f"{what} failed: another rank died or stopped answering ({first[:200]})") from exc


def all_reduce(world: World, tensor: Tensor, what: str = "an all-reduce") -> Tensor:
    """Sum ``tensor`` over the ranks, in place; every rank gets the same bits."""
    if world.distributed:
        with _collective(what):
            dist.all_reduce(tensor)
    return tensor


def all_gather(world: World, tensor: Tensor, what: str = "an all-gather") -> list[Tensor]:
    """Every rank's ``tensor`` (all of one shape), in rank order."""
    if not world.distributed:
        return [tensor]
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    with _collective(what):
        dist.all_gather(parts, tensor.contiguous())
    return parts


def broadcast(world: World, tensor: Tensor, what: str = "a broadcast") -> Tensor:
    """Rank 0's ``tensor`` on every rank, in place (same shape and dtype everywhere)."""
    if world.distributed:
        with _collective(what):
            dist.broadcast(tensor, 0)
    return tensor


def broadcast_object(world: World, value: T, what: str = "a broadcast") -> T:
    """Rank 0's (small, picklable) ``value`` on every rank."""
    if not world.distributed:
        return value
    box = [value]
    with _collective(what):
        dist.broadcast_object_list(box, 0, device=world.device if world.device.type == "cuda" else None)
    return box[0]


def gather_floats(world: World, values: Sequence[float], what: str = "an all-gather") -> list[list[float]]:
    """Every rank's few numbers (float64), in rank order."""
    local = torch.tensor(list(values), dtype=torch.float64, device=world.device)
    return [p.tolist() for p in all_gather(world, local, what)]


# --------------------------------------------------------------------------- joining


def _join(rank: int, size: int, device: torch.device, host: str, port: int, devices: Sequence[str],
          children: Sequence[Any] = (), local_size: int = 0) -> World:
    """``init_process_group`` on a TCP store. Rank 0 hosts the store; a launcher (``children``)
    watches its ranks while they start, so one that dies on the way is named at once, not after
    ``JOIN_TIMEOUT``."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    store = dist.TCPStore(host, port, size, is_master=rank == 0, timeout=timedelta(seconds=JOIN_TIMEOUT),
                          wait_for_workers=False)
    store.set(f"joined/{rank}", "1")
    if children:
        _await_children(store, children, devices)
    with _collective("starting the ranks"):
        dist.init_process_group(backend_for(device), store=store, rank=rank, world_size=size,
                                timeout=timedelta(seconds=timeout_seconds()))
    return World(rank, size, device, tuple(devices), local_size or size)


def _await_children(store: Any, children: Sequence[Any], devices: Sequence[str]) -> None:
    keys = [f"joined/{r}" for r in range(1, len(children) + 1)]
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not store.check(keys):
        for rank, child in enumerate(children, 1):
            if child.exitcode is not None:
                raise RankError(f"rank {rank} ({devices[rank]}) exited with code {child.exitcode} while starting")
        if time.monotonic() > deadline:
            raise RankError(f"the ranks did not start within {JOIN_TIMEOUT:.0f} s")
        time.sleep(0.05)


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def torchrun_env() -> dict[str, str] | None:
    """torchrun's variables when this process is one of several it started, else None."""
    env = {k: os.environ.get(k, "") for k in TORCHRUN_VARS}
    if not all(env.values()) or int(env["WORLD_SIZE"]) < 2:
        return None
    return env


def join_from_env(device_setting: str, devices_setting: str) -> World:
    """This process's world under torchrun: ``cuda:LOCAL_RANK`` (``cpu`` with ``--device cpu`` or no CUDA)."""
    env = torchrun_env()
    assert env is not None
    if devices_setting.strip():
        raise DeviceError(f"--devices {devices_setting}: under torchrun every process takes cuda:LOCAL_RANK "
                          "(--nproc-per-node sets how many); leave out --devices")
    local = int(env["LOCAL_RANK"])
    named = single_device(device_setting)
    use_cuda = torch.cuda.is_available() and (named is None or named.type == "cuda")
    if use_cuda and local >= torch.cuda.device_count():
        raise DeviceError(f"LOCAL_RANK {local}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                          "lower --nproc-per-node")
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
    names = tuple(f"rank {r}" for r in range(size))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0)
    return _join(rank, size, device, env["MASTER_ADDR"], int(env["MASTER_PORT"]), names, local_size=local_size or 1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_threads(devices: Sequence[torch.device]) -> int:
    """Threads per CPU process (a rank, or a parallel batch's worker): the cores shared out, so that
    they do not fight over them."""
    cpus = sum(1 for d in devices if d.type == "cpu")
    return max(1, (os.cpu_count() or 1) // max(1, cpus))


# --------------------------------------------------------------------------- the local launcher


def launch(target: Callable[..., T], devices: Sequence[torch.device], main_args: tuple, rank_args: tuple) -> T:
    """``target(world, *main_args)`` as rank 0 here, ``target(world, *rank_args)`` on one spawned
    process per further device; rank 0's result.

    Any way rank 0 ends (finished, failed, Ctrl-C) stops the other ranks. A collective that fails
    because another rank died or failed becomes one ``RankError`` naming that rank.
    """
    port, names = free_port(), tuple(str(d) for d in devices)
    context = multiprocessing.get_context("spawn")
    reports: Any = context.Queue()
    threads = cpu_threads(devices)
    children = [context.Process(target=_rank_main, name=f"hires-nst-rank-{r}", daemon=True,
                                args=(target, r, str(devices[r]), names, port, threads, rank_args, reports))
                for r in range(1, len(devices))]
    for child in children:
        child.start()
    previous_threads = torch.get_num_threads()
    if devices[0].type == "cpu":
        torch.set_num_threads(threads)
    try:
        world = _join(0, len(devices), devices[0], "127.0.0.1", port, names, children)
        return target(world, *main_args)
    except RankError as exc:
        raise _named(exc, children, reports, names) from None
    finally:
        torch.set_num_threads(previous_threads)
        leave()
        _stop(children)


def _rank_main(target: Callable[..., Any], rank: int, device: str, names: tuple[str, ...], port: int,
               threads: int, args: tuple, reports: Any) -> None:
    """A spawned rank: silent; its last word (an error) goes to the launcher, which reports it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the launcher, which stops us
    _die_with_parent()
    try:
        torch.set_num_threads(threads)
        world = _join(rank, len(names), torch.device(device), "127.0.0.1", port, names)
        target(world, *args)
    except BaseException as exc:  # noqa: BLE001  (the launcher reports it; this process only exits)
        if not isinstance(exc, RankError):  # a RankError here is the echo of someone else's failure
            reports.put((rank, f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"))
        reports.close()
        reports.join_thread()
        os._exit(1)
    finally:
        leave()


def _die_with_parent() -> None:
    """Linux: SIGTERM this rank when the launcher dies (it cannot leave orphans holding a GPU)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _named(exc: RankError, children: Sequence[Any], reports: Any, names: Sequence[str]) -> RankError:
    """The failure as the launcher sees it: which rank died (exit code, signal) or failed (its error)."""
    deadline = time.monotonic() + GRACE_SECONDS
    said: dict[int, str] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            rank, message = reports.get(timeout=0.1)
            said.setdefault(rank, message)
        if said or any(c.exitcode not in (None, 0) for c in children):
            break
    advice = "finished stages are kept: run the same command with --resume to continue"
    for rank, child in enumerate(children, 1):
        if rank in said:
            return RankError(f"rank {rank} ({names[rank]}) failed: {said[rank]}; {advice}")
        code = child.exitcode
        if code not in (None, 0):
            how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            return RankError(f"rank {rank} ({names[rank]}) {how}; {advice}")
    return RankError(f"{exc}; no rank exited within {GRACE_SECONDS:.0f} s, so one stopped answering "
                     f"(timeout {timeout_seconds():.0f} s, {TIMEOUT_ENV}); {advice}")


def _stop(children: Sequence[Any]) -> None:
    """SIGTERM every rank still running, then wait; SIGKILL what is left."""
    for child in children:
        if child.is_alive():
            child.terminate()
    deadline = time.monotonic() + GRACE_SECONDS
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join()
