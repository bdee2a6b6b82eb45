"""errors.classify: the one mapping from a failure to a status, a one-line message and an exit code."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import hires_nst.batch.job
import hires_nst.engine.render
from hires_nst.batch.job import run_job
from hires_nst.batch.jobs import BatchJob
from hires_nst.cli.main import app
from hires_nst.config.renderjob import RenderJob
from hires_nst.config.settings import resolve
from hires_nst.errors import (
    EXIT_BUG,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ConfigError,
    DeviceError,
    Failure,
    Interrupted,
    classify,
)
from tests.helpers.synthetic import write_image


@pytest.mark.parametrize("exc", [
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
], ids=["torch OOM", "CUDA runtime", "cuBLAS", "cuDNN"])
def test_device_allocation_failures_are_out_of_device_memory(exc: BaseException) -> None:
    failure = classify(exc)
    assert failure.out_of_memory and not failure.bug
    assert (failure.status, failure.exit_code) == ("failed", EXIT_ERROR)
    assert failure.message.startswith("out of device memory (") and failure.message.endswith("try a smaller --max-size")
    assert "\n" not in failure.message and "asynchronously" not in failure.message  # the first line only


def test_host_memory_failures_say_memory_without_device() -> None:
    assert classify(MemoryError()) == Failure("failed", "out of memory; try a smaller --max-size", EXIT_ERROR, True)
    cpu = classify(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 10 GB"))
    assert cpu.out_of_memory and cpu.message.startswith("out of memory (DefaultCPUAllocator")


def test_engine_errors_keep_their_message_on_one_line() -> None:
    failure = classify(ConfigError("--tile-size must be\nauto"))
    assert failure == Failure("failed", "--tile-size must be auto", EXIT_USAGE)  # a setting: a usage error
    # A DeviceError that mentions memory is the engine's own verdict (the retry gave up), not a retry case.
    assert not classify(DeviceError("out of memory at stage 1 even with 64 px tiles")).out_of_memory


def test_interruptions_and_bugs() -> None:
    assert classify(Interrupted("interrupted during stage 2/3; run with --resume")) == Failure(
        "interrupted", "interrupted during stage 2/3; run with --resume", EXIT_INTERRUPTED)
    assert classify(KeyboardInterrupt()) == Failure("interrupted", "interrupted", EXIT_INTERRUPTED)
    bug = classify(KeyError("conv9_9"))
    assert bug.bug and bug.exit_code == EXIT_BUG and bug.message == "KeyError: 'conv9_9'" and not bug.out_of_memory
    other_runtime = classify(RuntimeError("shape mismatch"))
    assert other_runtime.bug and not other_runtime.out_of_memory


def test_the_cli_and_a_batch_job_report_an_allocation_failure_alike(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    # Before classify, a cuBLAS allocation failure was an "internal error" (exit 70) on the command line.
    def cublas(job: object, sink: object = None) -> None:
        raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")

    content, style = write_image(tmp_path / "c.png"), write_image(tmp_path / "s.png", seed=1)
    monkeypatch.setattr(hires_nst.engine.render, "render", cublas)
    result = CliRunner().invoke(app, ["render", str(content), str(style), "-o", str(tmp_path / "o.png")])
    assert result.exit_code == EXIT_ERROR
    [line] = result.stderr.splitlines()
    assert line == "error: out of device memory (CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling " \
                   "`cublasCreate(handle)`); try a smaller --max-size"

    monkeypatch.setattr(hires_nst.batch.job, "render", cublas)
    job = BatchJob("j", RenderJob(content, (style,), tmp_path / "j.png",
                                  resolve(("test", {"output": {"work_dir": str(tmp_path / "work")}}))), "spec")
    outcome = run_job(job, restart=False)
    assert (outcome.status, outcome.error) == ("failed", line.removeprefix("error: "))
