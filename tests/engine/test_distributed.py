"""One render over several ranks (torch.distributed, gloo on localhost): bands, the shared objective,
lock-step ranks, the launcher's errors. No GPU needed: ``--devices cpu,cpu`` runs the same code.

Each launch spawns a process that imports torch, so the tests that start ranks do several checks
per launch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from hires_nst.cli.main import app
from hires_nst.config.settings import resolve
from hires_nst.core.bands import balanced_cuts, band_tiles, plan_bands
from hires_nst.core.tiles import Rect
from hires_nst.engine.bandplan import Costs, Line, spread_pays
from hires_nst.engine.objective import Objective
from hires_nst.engine.optimize import optimize_with_state
from hires_nst.engine.render import RenderJob, render
from hires_nst.events import Message
from hires_nst.io import images
from hires_nst.runtime import ranks
from hires_nst.runtime.placement import resolve_devices
from tests.helpers.objectives import CONTENT_LAYERS, STYLE_LAYERS, band_evaluations, problem
from tests.helpers.paths import CONTENT, ROOT, STYLE

CPU = torch.device("cpu")


def coverage(tiles_by_band, width: int, height: int) -> torch.Tensor:
    counts = torch.zeros(height, width, dtype=torch.int32)
    for band, tiles in tiles_by_band:
        for tile in tiles:
            c = tile.core.shifted(band.bounds.left, band.bounds.top)
            counts[c.top:c.bottom, c.left:c.right] += 1
    return counts


# --------------------------------------------------------------------------- the split (pure)


@pytest.mark.parametrize("width,height,ranks_", [(160, 96, 2), (96, 160, 3), (157, 203, 4), (300, 33, 2),
                                                 (64, 64, 8)])
@pytest.mark.parametrize("tile", [None, 32])
def test_bands_and_their_tiles_cover_every_pixel_once_with_aligned_cuts_and_full_halos(
        width: int, height: int, ranks_: int, tile: int | None) -> None:
    bands = plan_bands(width, height, ranks_, halo=20, align=16)  # the halo rounds up to 32
    assert 1 <= len(bands) <= ranks_
    tiles = [(b, band_tiles(b, width, height, tile, 20, 16)) for b in bands]
    assert bool((coverage(tiles, width, height) == 1).all())
    for band, band_tiles_ in tiles:
        r = band.rect
        assert r.left % 16 == 0 and r.top % 16 == 0
        assert band.bounds == Rect(max(0, r.left - 32), max(0, r.top - 32), min(width, r.right + 32),
                                   min(height, r.bottom + 32))
        for t in band_tiles_:
            core, window = t.core.shifted(band.bounds.left, band.bounds.top), t.window.shifted(band.bounds.left,
                                                                                                 band.bounds.top)
            assert window == Rect(max(0, core.left - 32), max(0, core.top - 32), min(width, core.right + 32),
                                  min(height, core.bottom + 32))


def test_cuts_leave_every_window_the_same_size_and_grids_beat_strips_where_the_halo_costs() -> None:
    cuts = balanced_cuts(4096, 4, halo=80, align=16)
    windows = [b - a + 80 * ((a > 0) + (b < 4096)) for a, b in pairwise(cuts)]
    assert max(windows) - min(windows) <= 16 and cuts[0] == 0 and cuts[-1] == 4096
    eight = plan_bands(4096, 4096, 8, halo=80)
    useful = 4096 * 4096 / 8 / max(b.window_pixels for b in eight)
    strips = 512 / (512 + 160)  # eight equal strips: an inner one reads 160 rows of halo
    assert useful > 0.85 > strips
    assert len(plan_bands(40, 20, 4, halo=0)) == 2 and len(plan_bands(20, 20, 4, halo=0)) == 1


def costs(fixed: float = 0.0, link: float = 0.0) -> Costs:
    """A device doing 1 us per window pixel forward, 3 us forward + backward, ``fixed`` s per window."""
    return Costs(Line(fixed, 1e-6), Line(fixed, 3e-6), Line(link, 1e-10), 2_400_000)


def test_spreading_pays_where_the_halo_and_the_fixed_costs_are_small_against_the_band() -> None:
    def pays(side: int, ranks_: int, model: Costs, tile: int | None = None) -> bool:
        bands = plan_bands(side, side, ranks_, 80)
        return spread_pays(model, side, side, bands, [None] * len(bands), tile, 80, 16, ranks_)[0]

    assert not pays(128, 2, costs())  # a 128 px band reads all 128 rows
    assert pays(256, 2, costs())  # 208 of 256 rows: one forward + backward each, 1.23x
    assert pays(1024, 2, costs()) and pays(4096, 8, costs())
    assert not pays(256, 2, costs(fixed=0.5))  # a window's fixed cost dwarfs the pixels saved
    assert not pays(1024, 2, costs(link=5.0))  # a slow link
    assert pays(512, 2, costs(), tile=128)  # a tiled stage: two passes over 16 windows against one over a band


# --------------------------------------------------------------------------- --devices


@pytest.fixture
def two_fake_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


@pytest.mark.parametrize("spec,message,code", [
    ("cuda:9", "--devices cuda:9: this machine has 2 CUDA device(s)", 1),
    ("cuda:0,cuda:0", "--devices cuda:0,cuda:0: a CUDA device is listed twice", 2),  # the config sees it
    ("cuda:0,cuda", "a CUDA device is listed twice", 1),  # cuda means the current device, cuda:0 here
    ("cpu,cuda:1", "--devices cpu,cuda:1: mixes CPU and CUDA devices; use one kind", 2),
])
def test_devices_that_cannot_be_served_are_one_clear_error(two_fake_gpus: None, spec: str, message: str, code: int,
                                                           tmp_path: Path) -> None:
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_devices(spec)
    result = CliRunner().invoke(app, ["render", str(CONTENT), str(STYLE), "-o", str(tmp_path / "x.png"),
                                      "--devices", spec, "--quiet"])
    assert result.exit_code == code  # 2: a usage error, found when the config is resolved
    assert message in " ".join(result.output.split()) and len(result.output.strip().splitlines()) == 1


def test_under_torchrun_devices_come_from_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    assert ranks.torchrun_env() is not None
    with pytest.raises(ranks.DeviceError, match="under torchrun every process takes cuda:LOCAL_RANK"):
        ranks.join_from_env("auto", "cpu,cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert ranks.torchrun_env() is None


# --------------------------------------------------------------------------- the objective over ranks


def evaluate_on_ranks(world: ranks.World) -> dict:
    """On every rank: one evaluation per band layout, then a few steps; what every rank ended with."""
    extractor, weights, targets, image = problem()
    evaluations = band_evaluations(world, extractor, weights, targets, image)
    out: dict = {name: (terms, grad, loss, objective.one_window)
                 for name, (terms, grad, loss, objective) in evaluations.items()}
    objective = evaluations["tiled"][3]
    for optimizer, lr in (("lbfgs", 1.0), ("adam", 0.02)):
        stepped, _ = optimize_with_state(image, objective, optimizer=optimizer, lr=lr, iterations=4)
        out[optimizer] = ranks.all_gather(world, stepped)
    return out


@pytest.mark.slow
def test_two_ranks_give_the_single_process_loss_and_gradient_and_stay_bit_identical() -> None:
    extractor, weights, targets, image = problem()
    single = image.clone()
    expected = Objective(extractor, targets, weights)(single)
    got = ranks.launch(evaluate_on_ranks, [CPU, CPU], (), ())

    for name in ("one window", "tiled"):
        terms, grad, loss_only, one_window = got[name]
        assert one_window == (name == "one window")
        for key in ("total", "content", "style", "tv"):
            assert terms[key] == pytest.approx(float(expected[key]), rel=1e-5), (name, key)
            assert float(loss_only[key]) == pytest.approx(float(expected[key]), rel=1e-5), (name, key)
        assert float((grad - single.grad).norm() / single.grad.norm()) < 1e-5, name
    for optimizer in ("lbfgs", "adam"):
        first, second = got[optimizer]
        assert torch.equal(first, second), optimizer
        reference, _ = optimize_with_state(image, Objective(extractor, targets, weights), optimizer=optimizer,
                                           lr=1.0 if optimizer == "lbfgs" else 0.02, iterations=4)
        assert float((first - reference).abs().mean()) < 0.5 / 255, optimizer


# --------------------------------------------------------------------------- renders


def render_config(tmp_path: Path, name: str, **device) -> dict:
    # Adam, not L-BFGS: L-BFGS renders of 12 iterations differ by 4-5 levels on ONE device between
    # 1 and 2 threads (float rounding, amplified), so they cannot show that two ranks add nothing.
    return {"pyramid": {"min_size": 64, "max_size": 128, "scale_factor": 1.5, "iterations": [4]},
            "optim": {"optimizer": "adam", "lr": 0.005},
            "loss": {"content_layers": list(CONTENT_LAYERS), "style_layers": list(STYLE_LAYERS)},
            "tiling": {"tile_size": "64"}, "device": {"precision": "fp32", **device},
            "output": {"work_dir": str(tmp_path / f"work-{name}")}}


@pytest.mark.slow
def test_a_three_stage_render_on_two_cpu_ranks_equals_the_single_device_render(tmp_path: Path) -> None:
    events: list = []
    one = render(RenderJob(CONTENT, (STYLE,), tmp_path / "one.png",
                           resolve(("test", render_config(tmp_path, "one", device="cpu")))))
    two = render(RenderJob(CONTENT, (STYLE,), tmp_path / "two.png",
                           resolve(("test", render_config(tmp_path, "two", devices="cpu,cpu")))), events.append)

    # 64 x 48 and 96 x 72 spread if the calibration finds it pays; 128 x 96 is 4 tiles on one device
    # against 2 per rank, so it always does.
    spread = [e.text.split(":")[0] for e in events if isinstance(e, Message) and "bands over 2 ranks" in e.text]
    assert "stage 3" in spread
    a, b = (images.load_image(r.output) for r in (one, two))
    assert a.shape == b.shape == (96, 128, 3)
    assert float(np.abs(a - b).mean()) < 0.5 / 255
    for key in ("total", "content", "style"):
        assert two.losses[key] == pytest.approx(one.losses[key], rel=1e-2), key


def rank_processes(launcher: int) -> list[int]:
    """The spawned ranks of a launcher process (not multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher and b"spawn_main" in command:
            found.append(int(entry.name))
    return found


def wait_for(condition, what: str, process: subprocess.Popen, seconds: float = 300.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the render ended (code {process.returncode}) before {what}: "
                                 f"{process.stderr.read() if process.stderr else ''}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def trace_stages(work: Path) -> set[int]:
    try:
        rows = (work / "trace.csv").read_text().splitlines()[1:]
    except OSError:
        return set()
    return {int(row.split(",")[0]) for row in rows if row}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
def test_stopping_the_launcher_or_killing_a_rank_stops_every_rank_and_resume_finishes(tmp_path: Path) -> None:
    work, output = tmp_path / "work", tmp_path / "out.png"
    command = [sys.executable, "-m", "hires_nst", "render", str(CONTENT), str(STYLE), "-o", str(output),
               "--devices", "cpu,cpu", "--min-size", "64", "--max-size", "128", "--scale-factor", "1.5",
               "--iterations", "40", "--optimizer", "adam", "--tile-size", "64", "--precision", "fp32",
               "--content-layers", ",".join(CONTENT_LAYERS), "--style-layers", ",".join(STYLE_LAYERS),
               "--save-every", "5", "--work-dir", str(work), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start(*extra: str) -> subprocess.Popen:
        return subprocess.Popen(command + list(extra), stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)

    # SIGTERM on the launcher, during stage 1: every rank stops, the saved progress stays.
    first = start()
    wait_for(lambda: 0 in trace_stages(work) and len(rank_processes(first.pid)) == 1, "stage 1", first)
    (rank,) = rank_processes(first.pid)
    first.send_signal(signal.SIGTERM)
    _, stopped = first.communicate(timeout=120)
    assert first.returncode == 130 and "interrupted" in stopped and "--resume" in stopped
    assert not Path(f"/proc/{rank}").exists() or b"zombie" in Path(f"/proc/{rank}/status").read_bytes().lower()

    # Rank 1 killed during stage 2: the launcher says which rank, in one line, and stops.
    second = start("--resume")
    wait_for(lambda: 1 in trace_stages(work), "stage 2", second)
    (rank,) = rank_processes(second.pid)
    os.kill(rank, signal.SIGKILL)
    _, failed = second.communicate(timeout=120)
    assert second.returncode == 1, failed
    lines = failed.strip().splitlines()
    assert len(lines) == 1 and "rank 1 (cpu) was killed by SIGKILL" in lines[0] and "--resume" in lines[0]
    assert (work / "stage-0.pt").is_file()

    # --resume finishes the render.
    third = start("--resume")
    _, finished = third.communicate(timeout=600)
    assert third.returncode == 0, finished
    assert images.load_image(output).shape == (96, 128, 3)
