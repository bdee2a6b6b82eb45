"""Batches on a Ray cluster (``--cluster``): the same outputs as a local batch, a worker killed mid-job
retried and resumed from its checkpoint, a failing job that fails alone, Ctrl-C, and an unreachable
head reported at once. One local Ray instance (2 CPUs, no dashboard) serves the whole module; renders
are tiny (32 -> 48 px, fp32) so that a 2-core machine runs the module in about a minute."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from hires_nst.batch.jobs import load_batch
from hires_nst.batch.run import run_batch
from hires_nst.cli.main import app
from hires_nst.errors import DeviceError
from hires_nst.io import images
from tests.helpers import cluster_hooks
from tests.helpers.paths import ROOT
from tests.helpers.synthetic import batch_folder

ray = pytest.importorskip("ray")
from hires_nst.batch import cluster  # noqa: E402  (needs Ray)

runner = CliRunner()
PRESET = """description = "Tiny fp32 renders for the cluster tests."
[pyramid]
min_size = 32
max_size = 48
iterations = [3, 3]
[device]
precision = "fp32"
"""


@pytest.fixture(scope="module")
def crash_plan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Start the module's Ray instance; returns the file that tells a worker to die (see cluster_hooks)."""
    plan = tmp_path_factory.mktemp("ray") / "crash.json"
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(address="local", num_cpus=2, include_dashboard=False,  # "local": never a cluster `ray start` made
             log_to_driver=False, logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": path, cluster_hooks.ENV: str(plan)},
                          "worker_process_setup_hook": "tests.helpers.cluster_hooks.install"})
    yield plan
    ray.shutdown()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return batch_folder(tmp_path, PRESET)


def job_file(folder: Path, body: str) -> Path:
    path = folder / "jobs.toml"
    path.write_text('output_dir = "out"\n[defaults]\npreset = "tiny.toml"\n' + body)
    return path


def job(name: str, content: str, extra: str = "") -> str:
    return f'\n[[job]]\nname = "{name}"\ncontent = "in/{content}.png"\nstyles = "in/s.png"\n{extra}'


def manifest(folder: Path) -> dict[str, dict]:
    return {j["name"]: j for j in json.loads((folder / "out" / "manifest.json").read_text())["jobs"]}


FOUR = job("j1", "a") + job("j2", "b") + job("j3", "a", "overrides.loss = { style_weight = 100.0 }\n") + job("j4", "b")


def test_four_jobs_on_two_ray_cpus_match_the_local_batch(folder: Path, crash_plan: Path) -> None:
    jobs = job_file(folder, FOUR)
    local = run_batch(load_batch(jobs, folder / "local"))
    assert [o.status for o in local.outcomes] == ["finished"] * 4

    result = runner.invoke(app, ["batch", str(jobs), "--cluster", "local", "-q"])

    assert result.exit_code == 0, result.output
    records = manifest(folder)
    assert [r["status"] for r in records.values()] == ["finished"] * 4
    for record in records.values():
        assert record["attempt"] == 1 and record["node"] and record["node_id"] and record["pid"]
        assert record["device"].startswith("cpu x1 on ") and record["progress"] is None
        assert (record["width"], record["height"]) in ((48, 40), (40, 48))
    assert len({r["pid"] for r in records.values()}) >= 2  # two workers rendered side by side
    assert json.loads((folder / "out" / "manifest.json").read_text())["counts"] == {"finished": 4}
    for name in ("j1", "j2", "j3", "j4"):
        ours = images.load_image(folder / "out" / f"{name}.png") * 255
        theirs = images.load_image(folder / "local" / f"{name}.png") * 255
        assert np.abs(ours - theirs).mean() < 0.5, name
    assert not (folder / "out" / cluster.MARKER).exists()
    assert "finished in" in (folder / "out" / records["j1"]["log"]).read_text()  # the worker wrote it, on the share


def test_a_worker_killed_mid_job_is_retried_and_goes_on_from_its_checkpoint(folder: Path, crash_plan: Path) -> None:
    marker = folder / "died"
    slow = 'overrides = { pyramid = { iterations = [3, 30] }, output = { save_every = 5 } }\n'
    crash_plan.write_text(json.dumps({"job": "victim", "stage": 1, "iteration": 12, "marker": str(marker)}))
    try:
        result = runner.invoke(app, ["batch", str(job_file(folder, job("victim", "a", slow) + job("other", "b"))),
                                     "--cluster", "local"])
    finally:
        crash_plan.unlink()

    assert result.exit_code == 0, result.output
    assert marker.is_file()  # the first attempt did die
    records = manifest(folder)
    assert [r["status"] for r in records.values()] == ["finished", "finished"]
    assert records["victim"]["attempt"] == 2 and records["other"]["attempt"] == 1
    assert records["victim"]["pid"] != int(marker.read_text())
    assert "victim: attempt 2 on cpu x1" in result.stderr
    log = (folder / "out" / records["victim"]["log"]).read_text()
    assert "resuming: 1 of 2 stages already done" in log
    assert "resuming stage 2 at iteration 10 of 30" in log  # the last save before iteration 12
    assert "victim: resuming stage 2 at iteration 10 of 30" in result.stderr


def test_a_missing_input_fails_alone_and_a_rerun_skips_the_finished_jobs(folder: Path, crash_plan: Path) -> None:
    body = job("good", "a") + job("missing", "nope") + job("also", "b")
    jobs = job_file(folder, body)

    first = runner.invoke(app, ["batch", str(jobs), "--cluster", "local", "-q"])

    assert first.exit_code == 1, first.output
    assert "1 job(s) failed" in first.stderr
    records = manifest(folder)
    assert [r["status"] for r in records.values()] == ["finished", "failed", "finished"]
    assert records["missing"]["error"] == f"content image not found: {folder / 'in' / 'nope.png'}"
    good = (folder / "out" / "good.png").stat().st_mtime_ns

    job_file(folder, body + "overrides.loss = { style_weight = 3.0 }\n")  # "also" changed
    again = runner.invoke(app, ["batch", str(jobs), "--cluster", "local", "-q"])

    assert again.exit_code == 1
    assert again.stdout.count("done in an earlier run") == 1
    assert (folder / "out" / "good.png").stat().st_mtime_ns == good
    records = manifest(folder)
    assert [r["status"] for r in records.values()] == ["finished", "failed", "finished"]
    assert "attempt" not in records["good"] and records["missing"]["attempt"] == records["also"]["attempt"] == 1
    log = (folder / "out" / records["also"]["log"]).read_text()
    assert log.count("start also") == 2 and "resuming" not in log  # rendered afresh, its log kept


def test_ctrl_c_on_the_driver_cancels_the_tasks_and_keeps_their_checkpoints(folder: Path, crash_plan: Path) -> None:
    slow = 'overrides = { pyramid = { iterations = [5000, 3] }, optim = { tolerance = 0.0 } }\n'  # long: Ctrl-C ends it
    batch = load_batch(job_file(folder, job("s1", "a", slow) + job("s2", "b", slow) + job("s3", "a", slow)))
    rendering: list[str] = []

    def ctrl_c_once_two_render() -> None:  # a person watching the manifest, then pressing Ctrl-C
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(rendering) < 2:
            time.sleep(0.1)
            with contextlib.suppress(OSError, ValueError):
                rendering[:] = [r["name"] for r in manifest(folder).values() if r.get("progress")]
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=ctrl_c_once_two_render, daemon=True)
    with cluster.connect("local") as ray_runner:
        watcher.start()
        result = run_batch(batch, runner=ray_runner)
    watcher.join()

    assert sorted(rendering) == ["s1", "s2"]
    statuses = [o.status for o in result.outcomes]
    # s3 was queued: cancelled before it ran, or (when Ray had already handed it to a worker) stopped at once
    assert statuses[:2] == ["interrupted", "interrupted"] and statuses[2] in ("pending", "interrupted"), statuses
    assert "run the same batch command again to resume" in result.stopped
    records = manifest(folder)
    assert [r["status"] for r in records.values()] == statuses
    for name in rendering:
        work = json.loads((folder / "out" / records[name]["work_dir"] / "status.json").read_text())
        assert work["state"] == "interrupted"  # the render itself was stopped, and kept what it had
        assert records[name]["progress"].startswith("stage 1/2 ")  # where it was when it stopped
    assert not result.sheets


def test_an_unreachable_head_is_one_clear_error_and_nothing_is_written(folder: Path) -> None:
    jobs = job_file(folder, job("j", "a"))
    began = time.monotonic()

    result = runner.invoke(app, ["batch", str(jobs), "--cluster", "ray://nowhere:1"])

    assert time.monotonic() - began < cluster.CONNECT_SECONDS + 10
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot reach the Ray cluster at ray://nowhere:1")
    assert not (folder / "out").exists()


def test_without_ray_cluster_says_how_to_install_it(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = runner.invoke(app, ["batch", str(job_file(folder, job("j", "a"))), "--cluster", "local"])
    assert result.exit_code == 1
    assert result.stderr.strip() == ('error: --cluster needs Ray, which is not installed here: '
                                     'pip install "hires-nst[cluster]"')
    assert not (folder / "out").exists()


@pytest.mark.parametrize("address, expected", [
    ("ray://head", ("head", 10001)), ("ray://10.0.0.5:10002", ("10.0.0.5", 10002)), ("head:6380", ("head", 6380)),
    ("head", ("head", 6379))])
def test_cluster_addresses_take_rays_default_ports(address: str, expected: tuple[str, int]) -> None:
    assert cluster.parse_address(address) == expected


def test_jobs_ask_for_a_gpu_where_the_cluster_has_them_else_cpus() -> None:
    gpu_nodes = [{"Alive": True, "Resources": {"CPU": 16.0, "GPU": 2.0}}, {"Alive": False, "Resources": {"GPU": 8.0}}]
    one = cluster.plan_resources(gpu_nodes, None, None, 3)
    assert (one.num_gpus, one.num_cpus, one.device, one.devices) == (1.0, 1, "cuda", "")
    both = cluster.plan_resources(gpu_nodes, 2, 4, 3)
    assert (both.num_gpus, both.num_cpus, both.devices) == (2, 4, "all")
    cpu = cluster.plan_resources([{"Alive": True, "Resources": {"CPU": 8.0}}], None, 4, 0)
    assert (cpu.num_gpus, cpu.num_cpus, cpu.device, cpu.max_retries) == (0.0, 4, "cpu", 0)
    with pytest.raises(DeviceError, match="--gpus-per-job 4: the largest node of the cluster has 2 GPU"):
        cluster.plan_resources(gpu_nodes, 4, None, 3)  # Ray would wait for such a node forever
    with pytest.raises(DeviceError, match="--cpus-per-job 32"):
        cluster.plan_resources(gpu_nodes, None, 32, 3)


def test_a_changed_job_has_its_work_discarded_by_the_driver_keeping_its_log_and_what_is_not_ours(
        tmp_path: Path) -> None:
    from hires_nst.batch.jobs import BatchJob
    from hires_nst.config.settings import OutputConfig, RenderConfig
    from hires_nst.engine.render import RenderJob

    work = tmp_path / "work" / "j"
    (work / "frames").mkdir(parents=True)
    for name in ("job.log", "stage-0.pt", "settings.json", "status.json", "frames/1.png"):
        (work / name).write_text(name)
    config = RenderConfig(output=OutputConfig(work_dir=str(work)))
    job = BatchJob("j", RenderJob(tmp_path / "a.png", (tmp_path / "s.png",), tmp_path / "j.png", config), "spec")
    messages: list = []

    cluster.discard_work(job, messages.append)  # a retry must resume, so the task itself never discards

    assert sorted(p.name for p in work.iterdir()) == ["frames", "job.log"]  # frames/: hires-nst never wrote it
    assert (work / "frames" / "1.png").is_file() and "discarded" in messages[0].text


def test_a_lost_cluster_records_the_running_jobs_as_interrupted(folder: Path) -> None:
    from hires_nst.batch.job import Ledger

    batch = load_batch(job_file(folder, job("j1", "a") + job("j2", "b")))
    (folder / "out").mkdir()
    ledger = Ledger(batch, {})

    class HeadGone:  # what ray.wait does once the Ray Client connection is gone
        exceptions = ray.exceptions

        def wait(self, *args, **kwargs):
            raise ConnectionError("Failed during this or a previous request")

    driver = cluster.Driver(HeadGone(), ledger, lambda event: None, reporter=None, total=2, max_retries=3)
    driver.start("j1", {"device": "cuda (GPU 0)", "node": "farm-1", "node_id": "abc", "pid": 7})

    with pytest.raises(DeviceError, match="lost the Ray cluster .*run the same command again"):
        driver.run({"ref-1": "j1", "ref-2": "j2"})

    assert [(r["status"], r["device"]) for r in manifest(folder).values()] == [
        ("interrupted", "cuda (GPU 0) on farm-1"), ("pending", None)]
