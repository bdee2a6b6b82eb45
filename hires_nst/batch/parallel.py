"""Jobs in parallel, one worker process per device (``--devices cuda:0,cuda:1``; ``cpu,cpu`` works too).

Workers are spawned (CUDA cannot be forked), take the next job from a shared queue when they are
free, and report back; only this parent process writes the manifest. Stopping: the parent turns
its own Ctrl-C or SIGTERM into one SIGTERM per worker; each worker lets the render finish the
checkpoint it is writing, reports the job as interrupted and exits. Workers ignore SIGINT, so a
Ctrl-C in the terminal (which signals the whole process group) reaches them once, through the parent.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
from collections.abc import MutableMapping, Sequence
from typing import Any

from hires_nst.batch.job import Ledger, Outcome, run_job
from hires_nst.batch.jobs import BatchJob
from hires_nst.config.devices import DeviceName, device_name
from hires_nst.errors import DeviceError
from hires_nst.events import JobFinished, JobStarted, Sink
from hires_nst.runtime.placement import check_cpu_ranks, resolve_device
from hires_nst.runtime.ranks import cpu_threads

POLL_SECONDS = 0.5
JOIN_SECONDS = 60.0  # how long a stopping worker may take to finish its checkpoint write


def run_parallel(todo: Sequence[BatchJob], ledger: Ledger, sink: Sink,
                 devices: Sequence[str]) -> tuple[dict[str, Outcome], str]:
    """Run ``todo`` on one worker per entry of ``devices``; returns outcomes and a stop message (or "")."""
    names = [device_name(device, "--devices") for device in devices]  # each worker's device, read once
    resolved = [resolve_device(name, "--devices") for name in names]  # one this machine lacks fails the batch now
    check_cpu_ranks(resolved, f"--devices {','.join(devices)}")
    if not todo:
        return {}, ""
    context = multiprocessing.get_context("spawn")
    jobs: Any = context.Queue()
    results: Any = context.Queue()
    threads = cpu_threads(resolved)
    workers = [context.Process(target=_worker, args=(name, threads, jobs, results), daemon=True) for name in names]
    for worker in workers:
        worker.start()
    state = _State(todo, ledger, sink, results)
    stopped = False
    try:
        state.await_ready(workers)  # every device set up before the first job is handed out
        for job in todo:
            jobs.put((job, ledger.restart(job)))
        for _ in workers:
            jobs.put(None)
        state.collect(workers)
    except KeyboardInterrupt:
        stopped = True
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signal.SIGTERM)
        state.collect(workers)
    finally:
        for worker in workers:
            worker.join(JOIN_SECONDS)
            if worker.is_alive():
                worker.terminate()
    interrupted = state.settle(stopped)
    if stopped or interrupted:
        return state.outcomes, ledger.stopped_message(interrupted[0] if interrupted else None)
    return state.outcomes, ""


class _State:
    """What the parent knows: which job runs where, and how each ended."""

    def __init__(self, todo: Sequence[BatchJob], ledger: Ledger, sink: Sink, results: Any) -> None:
        self.todo, self.ledger, self.sink, self.results = list(todo), ledger, sink, results
        self.running: dict[str, str] = {}  # job name -> device
        self.outcomes: dict[str, Outcome] = {}
        self.started = 0

    def await_ready(self, workers: Sequence[Any]) -> None:
        """Wait until every worker has said ready or exited; fail if none is ready."""
        ready = 0
        while ready + sum(w.exitcode is not None for w in workers) < len(workers):
            try:
                message = self.results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            ready += message[0] == "ready"
        if ready == 0:
            codes = ", ".join(str(w.exitcode) for w in workers)
            raise DeviceError(f"no worker process started (exit codes {codes}); try without --devices")

    def collect(self, workers: Sequence[Any]) -> None:
        """Handle worker messages until every job has ended or every worker has exited."""
        while len(self.outcomes) < len(self.todo):
            try:
                message = self.results.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if any(w.is_alive() for w in workers):
                    continue
                try:  # the last messages of workers that just exited
                    message = self.results.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    return
            self.handle(message)

    def handle(self, message: tuple) -> None:
        if message[0] == "started":
            _, name, device = message
            self.running[name] = device
            self.ledger.started(name, device)
            self.sink(JobStarted(name, self.started, len(self.todo), device))
            self.started += 1
            return
        outcome: Outcome = message[1]
        self.outcomes[outcome.name] = outcome
        self.running.pop(outcome.name, None)
        self.ledger.ended(outcome)
        self.sink(JobFinished(outcome.name, outcome.status, outcome.seconds, outcome.error))

    def settle(self, stopped: bool) -> list[str]:
        """Jobs a worker took but never reported (it was stopped, or died) are recorded as such;
        returns the interrupted jobs."""
        for name, device in self.running.items():
            if stopped:
                outcome = Outcome(name, "interrupted", error="interrupted", device=device)
            else:
                outcome = Outcome(name, "failed", error=f"the worker process on {device} exited during this job "
                                  "(killed, or out of host memory?)", device=device)
            self.outcomes[name] = outcome
            self.ledger.ended(outcome)
        return [o.name for o in self.outcomes.values() if o.status == "interrupted"]


def pin_device(device: DeviceName, environ: MutableMapping[str, str]) -> str:
    """Make ``device`` the only GPU this process can see; returns its name inside the process.

    Set before torch starts CUDA: ``CUDA_VISIBLE_DEVICES`` then holds one index (relative to the
    parent's own list, if it had one), so even a job that asks for ``devices = "all"`` reaches only
    its worker's GPU, as ``cuda:0``. A CPU worker sees no GPU at all.
    """
    if device.type == "cpu":
        environ["CUDA_VISIBLE_DEVICES"] = ""
        return str(device)
    index = device.index or 0
    visible = [v.strip() for v in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if "CUDA_VISIBLE_DEVICES" in environ and index >= len(visible):
        raise DeviceError(f"{device}: CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']} has no such device")
    environ["CUDA_VISIBLE_DEVICES"] = visible[index] if visible else str(index)
    return "cuda:0"


def _worker(name: DeviceName, threads: int, jobs: Any, results: Any) -> None:
    """A worker process: take jobs until the queue says stop or the parent says SIGTERM."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    device = str(name)  # as the parent reports it
    try:
        pinned = pin_device(name, os.environ)  # before torch's first CUDA call in this process
        import torch

        import hires_nst.engine.render  # noqa: F401  (the slow imports, before saying ready)

        if name.type == "cpu":
            torch.set_num_threads(threads)
        results.put(("ready", device))
        while True:
            item = jobs.get()
            if item is None:
                return
            job, restart = item
            results.put(("started", job.name, device))
            outcome = run_job(job, restart, device=pinned, label=device)
            results.put(("done", outcome))
            if outcome.status == "interrupted":
                return
    except KeyboardInterrupt:
        return


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
