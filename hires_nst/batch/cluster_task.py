"""What runs on the Ray cluster for a batch: one task per job, and the actor it reports to.

Kept apart from ``cluster.py`` (the driver), and light to import: the reporter's worker process
loads this module, and must be up within a second or two, before the first task reports to it (a
report sent to an actor that is still starting dies with a worker that dies). So the renderer
(torch) is imported only inside the task, and Ray only where it runs, on a worker.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hires_nst.events import Event, Message, StageStarted, Step

if TYPE_CHECKING:
    from hires_nst.batch.job import Outcome
    from hires_nst.batch.jobs import BatchJob

MARKER = ".hires-nst-cluster"  # written by the driver into the output folder; each task checks it sees it


@dataclass(frozen=True)
class TaskResources:
    """What one job asks Ray for, and the device it renders on there (Ray sets CUDA_VISIBLE_DEVICES,
    so ``cuda`` is the GPU Ray gave the task and ``all`` every GPU it gave)."""

    num_cpus: int
    num_gpus: float
    device: str  # cuda | cpu
    devices: str  # "" (one device) | all
    max_retries: int


class Reporter:
    """The driver's mailbox (a Ray actor): tasks put reports in, the driver takes them all out."""

    def __init__(self) -> None:
        self.messages: list[tuple] = []

    def report(self, kind: str, name: str, payload: Any) -> None:
        self.messages.append((kind, name, payload))

    def drain(self) -> list[tuple]:
        messages, self.messages = self.messages, []
        return messages


def run_task(job: BatchJob, reporter: Any, resources: TaskResources, marker: tuple[str, str]) -> Outcome:
    """The Ray task of one job: check the shared folder, render with ``run_job``, return the outcome.

    A first attempt and a retry do the same: go on from whatever checkpoints the job's work dir holds
    (the driver discarded those of a changed job before it submitted the task). The task never
    waits on Ray (``ray.get``): a blocked task lends its CPU to another, which would then run one
    job more than the node has CPUs for.
    """
    import ray
    import torch

    from hires_nst.batch.job import Outcome, run_job

    node, device = socket.gethostname(), _device_name(ray, resources)
    where = {"node": node, "node_id": ray.get_runtime_context().get_node_id()[:12], "pid": os.getpid(),
             "device": device}
    reporter.report.remote("started", job.name, where)
    missing = _unshared(marker, node)
    if missing:
        return Outcome(job.name, "failed", error=missing, device=device)
    if resources.device == "cpu":
        torch.set_num_threads(resources.num_cpus)
    return run_job(_placed(job, resources), False, Relay(job.name, reporter))


def _device_name(ray: Any, resources: TaskResources) -> str:
    if resources.device == "cpu":
        return f"cpu x{resources.num_cpus}"
    return "cuda (GPU " + ",".join(str(i) for i in ray.get_gpu_ids()) + ")"


def _unshared(marker: tuple[str, str], node: str) -> str:
    """Why this node cannot take part (the output folder is not the driver's), or ""."""
    path, token = Path(marker[0]), marker[1]
    try:
        if path.read_text() == token:
            return ""
    except OSError:
        pass
    return (f"node {node} does not see the batch's output folder {path.parent} as the driver wrote it: a cluster "
            "batch needs it on a filesystem that every node mounts at the same path")


def _placed(job: BatchJob, resources: TaskResources) -> BatchJob:
    config = job.render.config
    device = replace(config.device, device=resources.device, devices=resources.devices)
    return replace(job, render=replace(job.render, config=replace(config, device=device)))


class Relay:
    """The task's event sink: a progress line for the driver at each stage's start and each tenth of
    it, and the engine's messages (where a resumed render goes on from, a fallback taken)."""

    def __init__(self, name: str, reporter: Any) -> None:
        self.name, self.reporter = name, reporter
        self.stage: StageStarted | None = None
        self.tenth = 0

    def __call__(self, event: Event) -> None:
        if isinstance(event, StageStarted):
            self.stage, self.tenth = event, event.done * 10 // max(1, event.iterations)
            self._send("progress", self._where(event.done))
        elif isinstance(event, Step) and self.stage is not None:
            tenth = event.iteration * 10 // max(1, event.iterations)
            if tenth > self.tenth:
                self.tenth = tenth
                self._send("progress", self._where(event.iteration))
        elif isinstance(event, Message):
            self._send("message", event.text)

    def _where(self, iteration: int) -> str:
        stage = self.stage
        assert stage is not None
        return (f"stage {stage.stage + 1}/{stage.stages} {stage.width}x{stage.height}, "
                f"iteration {iteration}/{stage.iterations}")

    def _send(self, kind: str, payload: str) -> None:
        self.reporter.report.remote(kind, self.name, payload)  # not waited for: progress may be lost, never blocks
