"""Batches on a Ray cluster (``hires-nst batch JOBS.toml --cluster ADDRESS``): connecting, and the driver.

Every job is one Ray task (``cluster_task.run_task``) that runs the same ``run_job`` as a local
batch, on one GPU (or ``--cpus-per-job`` CPUs where the cluster has no GPU); Ray picks the node and
pins the device. This process, the driver, alone writes the manifest and the summary: tasks tell a
small reporter actor when they start (node, device) and how far they are (at each tenth of a stage),
the driver drains it while it waits, and each task's outcome (finished or failed, with why) comes
back as its result, the channel Ray keeps reliable and that tells a dead worker from a failed job.

What this needs, and why: the batch's output folder and its inputs on a filesystem that every node
mounts at the same path (NFS, SMB). A job's checkpoints live in its work dir there, so when a worker
or a whole node dies, Ray runs the task again (``max_retries``) on another worker, which goes on from
the job's last checkpoint on the share. The other design, shipping inputs in and outputs and
checkpoints back through Ray's object store, is not built: a node that dies takes the checkpoints it
had not shipped with it, and print-size checkpoints (hundreds of MB each) would cross the network at
every save. A task that finds the output folder missing on its node fails its job with a message
that says so, instead of rendering into a local folder that nobody will see.

Ctrl-C (or SIGTERM) on the driver cancels the tasks: Ray delivers it as a KeyboardInterrupt in each
running task, which keeps its checkpoints exactly as a local Ctrl-C does; the same command resumes.
Ray is imported only here, when ``--cluster`` is given: it is the optional ``cluster`` extra.

Over 300 lines on purpose: the Ray driver: connecting, submitting, watching and cancelling share one runner.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from hires_nst.batch.cluster_task import MARKER, Reporter, TaskResources, run_task
from hires_nst.batch.job import LOG, Ledger, Outcome
from hires_nst.batch.jobs import BatchJob
from hires_nst.errors import DeviceError
from hires_nst.events import JobFinished, JobStarted, Message, Sink
from hires_nst.io.writeplan import WORK_MARKER, own_files

CONNECT_SECONDS = 10.0  # how long the head may take to answer before --cluster gives up
POLL_SECONDS = 0.5  # how often the driver drains the reporter while it waits for the tasks
STOP_SECONDS = 60.0  # how long cancelled tasks may take to finish writing their checkpoints
CLIENT_PORT, GCS_PORT = 10001, 6379  # Ray's defaults: ray://HEAD (Ray Client) and HEAD (a cluster node)
INSTALL = 'pip install "hires-nst[cluster]"'


def import_ray() -> Any:
    """Ray, or one line that says how to get it."""
    try:
        import ray
    except ImportError:
        raise DeviceError(f"--cluster needs Ray, which is not installed here: {INSTALL}") from None
    return ray


@contextlib.contextmanager
def connect(address: str, gpus_per_job: float | None = None, cpus_per_job: int | None = None,
            max_retries: int = 3) -> Iterator[RayRunner]:
    """Join the Ray cluster at ``address`` and yield the batch runner for it; leave it afterwards.

    ``ray://HOST[:10001]`` goes through Ray Client (the driver may be anywhere), ``HOST:6379`` and
    ``auto`` join as a driver on a node of the cluster, ``local`` starts a Ray instance on this
    machine (or uses the one this process already runs, as tests and notebooks do). An unreachable
    head is reported within CONNECT_SECONDS, before anything is written.
    """
    ray = import_ray()
    reused = address == "local" and ray.is_initialized()
    dashboard = "" if reused else _init(ray, address)
    try:
        resources = plan_resources(ray.nodes(), gpus_per_job, cpus_per_job, max_retries)
        yield RayRunner(address, resources, _describe(ray, address, resources, dashboard))
    finally:
        if not reused:
            ray.shutdown()


def _init(ray: Any, address: str) -> str:
    """Connect; returns the dashboard's address ("" where the cluster runs none)."""
    if address not in ("local", "auto"):
        host, port = parse_address(address)
        check_reachable(address, host, port)
    if ray.is_initialized():
        raise DeviceError(f"--cluster {address}: this process is already connected to a Ray cluster")
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING"}
    if address.startswith("ray://"):
        try:
            import grpc  # noqa: F401  (Ray Client's transport, in ray[client] and ray[default])
        except ImportError:
            raise DeviceError(f"--cluster {address}: Ray Client needs grpcio: {INSTALL}") from None
    try:
        context = ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise DeviceError(f"cannot connect to the Ray cluster at {address}: {lines[0]}") from None
    return getattr(context, "dashboard_url", "") or ""


def parse_address(address: str) -> tuple[str, int]:
    """``ray://HOST[:PORT]`` or ``HOST[:PORT]`` -> (host, port), with Ray's default ports."""
    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not host or (port and not port.isdigit()):
        raise DeviceError(f"--cluster {address}: expected ray://HOST:PORT, HOST:PORT, auto or local")
    return host, int(port) if port else (CLIENT_PORT if client else GCS_PORT)


def check_reachable(address: str, host: str, port: int, seconds: float = CONNECT_SECONDS) -> None:
    """Fail in ``seconds`` when nothing answers at host:port (Ray itself retries for half a minute).
    The look-up runs in a thread because a name look-up cannot be given a timeout."""
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=seconds).close()
            outcome.append(None)
        except OSError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(seconds)
    if outcome and outcome[0] is None:
        return
    why = (f"no answer in {seconds:.0f}s" if not outcome else
           f"cannot resolve {host!r}" if isinstance(outcome[0], socket.gaierror) else
           getattr(outcome[0], "strerror", None) or str(outcome[0]))
    raise DeviceError(f"cannot reach the Ray cluster at {address}: {why}; is its head running "
                      f"(ray start --head) and port {port} open from here?")


def plan_resources(nodes: Sequence[dict[str, Any]], gpus_per_job: float | None, cpus_per_job: int | None,
                   max_retries: int) -> TaskResources:
    """What each job asks Ray for: GPUs where the cluster has them (else CPUs), and never more than
    the largest node has, since Ray would wait for such a node forever."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive")]
    most_gpus = max((r.get("GPU", 0.0) for r in alive), default=0.0)
    most_cpus = max((r.get("CPU", 0.0) for r in alive), default=0.0)
    gpus = (1.0 if most_gpus else 0.0) if gpus_per_job is None else gpus_per_job
    cpus = cpus_per_job or 1
    if gpus > most_gpus:
        raise DeviceError(f"--gpus-per-job {gpus:g}: the largest node of the cluster has {most_gpus:g} GPU(s)")
    if cpus > most_cpus:
        raise DeviceError(f"--cpus-per-job {cpus}: the largest node of the cluster has {most_cpus:g} CPU(s)")
    if max_retries < 0:
        raise DeviceError(f"--max-retries {max_retries}: must be >= 0")
    device, devices = ("cuda", "all" if gpus >= 2 else "") if gpus else ("cpu", "")
    return TaskResources(cpus, gpus, device, devices, max_retries)


def _describe(ray: Any, address: str, resources: TaskResources, dashboard: str) -> str:
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    total = ray.cluster_resources()
    ask = f"{resources.num_gpus:g} GPU" if resources.num_gpus else f"{resources.num_cpus} CPU"
    where = f"; dashboard http://{dashboard}" if dashboard else ""
    return (f"Ray cluster {address}: {len(nodes)} node(s), {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} "
            f"GPUs; each job takes {ask}, retried up to {resources.max_retries} time(s){where}")


@dataclass
class RayRunner:
    """``batch_run.Runner`` for a Ray cluster: one task per job, the ledger kept by this process."""

    address: str
    resources: TaskResources
    description: str

    def __call__(self, todo: Sequence[BatchJob], ledger: Ledger, sink: Sink) -> tuple[dict[str, Outcome], str]:
        sink(Message(self.description))
        if not todo:
            return {}, ""
        ray = import_ray()
        marker = ledger.batch.output_dir / MARKER
        token = uuid.uuid4().hex
        marker.write_text(token)  # a task checks that its node sees this very file
        reporter = ray.remote(Reporter).options(num_cpus=0, **_near_driver(ray)).remote()
        ray.get(reporter.drain.remote())  # up before the first task reports to it
        task = ray.remote(run_task).options(num_cpus=self.resources.num_cpus, num_gpus=self.resources.num_gpus,
                                            max_retries=self.resources.max_retries, retry_exceptions=False)
        for job in todo:
            if ledger.restart(job):
                discard_work(job, sink)
        refs = {task.remote(job, reporter, self.resources, (str(marker), token)): job.name for job in todo}
        driver = Driver(ray, ledger, sink, reporter, len(todo), self.resources.max_retries)
        try:
            stopped = driver.run(refs)
        finally:
            with contextlib.suppress(ConnectionError, ray.exceptions.RayError):  # the cluster may be gone
                ray.kill(reporter)
            marker.unlink(missing_ok=True)
        interrupted = [o.name for o in driver.outcomes.values() if o.status == "interrupted"]
        if stopped or interrupted:
            return driver.outcomes, ledger.stopped_message(interrupted[0] if interrupted else None)
        return driver.outcomes, ""


def discard_work(job: BatchJob, sink: Sink) -> None:
    """Empty the work dir of a job that changed since its checkpoints were made (or under --restart),
    keeping its log. Done here rather than in the task: a task that Ray runs again after a crash must
    go on from the checkpoints its first attempt made, never discard them."""
    work = Path(job.render.config.output.work_dir)
    if not work.is_dir():
        return
    for path in own_files(work):  # only what hires-nst wrote there (writeplan.py)
        if path.name not in (LOG, WORK_MARKER):
            path.unlink(missing_ok=True)
    sink(Message(f"{job.name}: changed since its checkpoints were made (or --restart): they were discarded"))


def _near_driver(ray: Any) -> dict[str, Any]:
    """Place the reporter on the head node: it dies only with the whole cluster."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {})]
    return {"scheduling_strategy": NodeAffinitySchedulingStrategy(head[0], soft=True)} if head else {}


class Driver:
    """What the driver knows: which job runs where, how far, and how each ended."""

    def __init__(self, ray: Any, ledger: Ledger, sink: Sink, reporter: Any, total: int, max_retries: int) -> None:
        self.ray, self.ledger, self.sink, self.reporter = ray, ledger, sink, reporter
        self.total, self.max_retries = total, max_retries
        self.running: dict[str, str] = {}  # job name -> device on node
        self.attempts: dict[str, int] = {}  # "started" reports seen per job: Ray's retries show here
        self.outcomes: dict[str, Outcome] = {}
        self.started = 0

    def run(self, refs: dict[Any, str]) -> bool:
        """Wait for every task; on Ctrl-C cancel them and wait for their checkpoints. True if stopped."""
        try:
            self.wait(refs, deadline=None)
            return False
        except (ConnectionError, self.ray.exceptions.RaySystemError) as exc:  # the head, or the link to it, died
            for name, where in list(self.running.items()):
                self.end(Outcome(name, "interrupted", error="the driver lost the Ray cluster", device=where))
            raise DeviceError(f"lost the Ray cluster ({type(exc).__name__}: {exc}); the jobs it ran are recorded "
                              "as interrupted: run the same command again to resume them") from None
        except KeyboardInterrupt:
            waiting = [ref for ref, name in refs.items() if name not in self.running]
            for ref in waiting + [ref for ref in refs if ref not in waiting]:  # the queued first: none may start
                self.ray.cancel(ref)
            with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C stops the waiting
                self.wait(refs, deadline=time.monotonic() + STOP_SECONDS)
            for name, where in list(self.running.items()):  # end() takes them out
                self.end(Outcome(name, "interrupted", error="interrupted", device=where))
            return True

    def wait(self, refs: dict[Any, str], deadline: float | None) -> None:
        pending = list(refs)
        while pending and (deadline is None or time.monotonic() < deadline):
            ready, pending = self.ray.wait(pending, num_returns=len(pending), timeout=POLL_SECONDS)
            ended = {refs[ref] for ref in ready}
            messages = self.fetch()
            self.apply([m for m in messages if m[1] in ended])  # a job's start before its end
            for ref in ready:
                self.end(self.result(ref, refs[ref]))
            self.apply([m for m in messages if m[1] not in ended])  # the next jobs' starts after
        self.apply(self.fetch())

    def fetch(self) -> list[tuple]:
        try:
            return self.ray.get(self.reporter.drain.remote())
        except self.ray.exceptions.RayError:
            return []  # the reporter is gone: progress is lost, results still come with the tasks

    def apply(self, messages: Sequence[tuple]) -> None:
        noted = False
        for kind, name, payload in messages:
            noted |= self.handle(kind, name, payload)
        if noted:
            self.ledger.write()

    def handle(self, kind: str, name: str, payload: Any) -> bool:
        """One report of a task; True if it changed the manifest without writing it."""
        if name in self.outcomes:
            return False  # a late report of a job whose result is in
        if kind == "started":
            self.start(name, payload)
        elif kind == "progress" and name in self.running:
            self.ledger.records[name]["progress"] = payload
            return True
        elif kind == "message":
            self.sink(Message(f"{name}: {payload}"))
        return False

    def start(self, name: str, where: dict[str, Any]) -> None:
        attempt = self.attempts[name] = self.attempts.get(name, 0) + 1
        device = f"{where['device']} on {where['node']}"
        self.running[name] = device
        self.ledger.started(name, device)
        self.ledger.records[name].update(node=where["node"], node_id=where["node_id"], pid=where["pid"],
                                         attempt=attempt, progress=None)
        self.ledger.write()
        if attempt == 1:
            self.sink(JobStarted(name, self.started, self.total, device))
            self.started += 1
        else:
            self.sink(Message(f"{name}: attempt {attempt} on {device} (Ray retried it: its worker or node died); "
                              "it goes on from its last checkpoint"))

    def result(self, ref: Any, name: str) -> Outcome:
        """The outcome a finished task returned, or why it has none."""
        exceptions = self.ray.exceptions
        try:
            return self.ray.get(ref)
        except exceptions.TaskCancelledError:
            return Outcome(name, "interrupted", error="interrupted", device=self.running.get(name, ""))
        except (exceptions.WorkerCrashedError, exceptions.NodeDiedError, exceptions.OwnerDiedError) as exc:
            return Outcome(name, "failed", device=self.running.get(name, ""), error=(
                f"its Ray worker died in each of {self.max_retries + 1} attempt(s) ({type(exc).__name__}: killed, "
                "out of host memory, or its node lost); its checkpoints are kept: run the batch again to resume"))
        except exceptions.RayError as exc:
            first = (str(exc).strip().splitlines() or [""])[-1]
            return Outcome(name, "failed", device=self.running.get(name, ""),
                           error=f"the Ray task failed: {type(exc).__name__}: {first}")

    def end(self, outcome: Outcome) -> None:
        if outcome.name in self.outcomes:
            return  # reported by the task, then returned by it
        if outcome.status == "interrupted" and outcome.name not in self.running:
            return  # cancelled before it started: it stays pending
        self.outcomes[outcome.name] = outcome
        device = self.running.pop(outcome.name, "")
        self.ledger.ended(replace(outcome, device=device or outcome.device))
        if outcome.status == "finished":
            self.ledger.records[outcome.name]["progress"] = None
            self.ledger.write()
        self.sink(JobFinished(outcome.name, outcome.status, outcome.seconds, outcome.error))
