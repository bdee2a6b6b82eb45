"""Batches: job files, failures recorded while the batch goes on, re-runs that skip finished jobs and
resume unfinished ones, grids with a contact sheet, outputs kept inside the output folder, and
parallel workers. Renders are tiny (32 -> 48 px, 2 iterations per stage) with a preset written here."""

from __future__ import annotations

import collections
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import hires_nst.batch.job
from hires_nst.batch.jobs import load_batch
from hires_nst.batch.run import run_batch
from hires_nst.cli.main import app
from hires_nst.errors import ConfigError, OutputError
from hires_nst.events import JobFinished, JobStarted, StageStarted, Step
from hires_nst.io import images
from hires_nst.io.contact_sheet import CAPTION, GAP
from hires_nst.io.writeplan import WORK_MARKER
from tests.helpers.paths import ROOT
from tests.helpers.synthetic import batch_folder, write_image

runner = CliRunner()
TINY_PRESET = """description = "Tiny renders for tests."
[pyramid]
min_size = 32
max_size = 48
iterations = [2]
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return batch_folder(tmp_path, TINY_PRESET)


def job_file(folder: Path, body: str, name: str = "jobs.toml") -> Path:
    path = folder / name
    path.write_text('output_dir = "out"\n[defaults]\npreset = "tiny.toml"\n' + body)
    return path


THREE_JOBS = """
[[job]]
name = "first"
content = "in/a.png"
styles = ["in/s.png"]

[[job]]
name = "missing"
content = "in/nope.png"
styles = "in/s.png"

[[job]]
name = "third"
content = "in/b.png"
styles = ["in/s.png"]
output = "prints/third.tif"
overrides = { output = { bit_depth = 16 }, loss = { style_weight = 100.0 } }
"""


def manifest(folder: Path) -> dict[str, dict]:
    return {job["name"]: job for job in json.loads((folder / "out" / "manifest.json").read_text())["jobs"]}


@pytest.fixture
def render_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The content image of every render the batch starts."""
    calls: list[str] = []
    real = hires_nst.batch.job.render

    def counting(job, sink):
        calls.append(job.content.name)
        return real(job, sink)

    monkeypatch.setattr(hires_nst.batch.job, "render", counting)
    return calls


def test_three_jobs_one_missing_two_outputs_one_recorded_failure(folder: Path, render_calls: list[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = job_file(folder, THREE_JOBS)
    monkeypatch.chdir(folder / "in")  # job-file paths are relative to the job file, not to here

    result = runner.invoke(app, ["batch", str(jobs), "-q"])

    assert result.exit_code == 1, result.output
    assert "1 job(s) failed" in result.stderr
    table = result.stdout
    assert "first" in table and "finished" in table and "48x40" in table and "failed" in table
    records = manifest(folder)
    assert [(r["name"], r["status"]) for r in records.values()] == [
        ("first", "finished"), ("missing", "failed"), ("third", "finished")]
    assert records["missing"]["error"] == f"content image not found: {folder / 'in' / 'nope.png'}"
    assert (records["first"]["width"], records["first"]["height"], records["first"]["output"]) == (48, 40, "first.png")
    assert (records["third"]["width"], records["third"]["height"]) == (40, 48)
    assert records["third"]["output"] == "prints/third.tif"
    with Image.open(folder / "out" / "prints" / "third.tif") as img:
        assert img.tag_v2[258] == (16, 16, 16)
    assert "finished" in (folder / "out" / records["first"]["log"]).read_text()
    assert "content image not found" in (folder / "out" / records["missing"]["log"]).read_text()
    assert render_calls == ["a.png", "nope.png", "b.png"]
    stamps = {p: p.stat().st_mtime_ns for p in (folder / "out").glob("*.png")}

    again = runner.invoke(app, ["batch", str(jobs), "-q"])

    assert again.exit_code == 1  # the missing file is still missing
    assert render_calls[3:] == ["nope.png"]  # the finished jobs were not rendered again
    assert {p: p.stat().st_mtime_ns for p in (folder / "out").glob("*.png")} == stamps
    assert "done in an earlier run" in again.stdout
    assert [r["status"] for r in manifest(folder).values()] == ["finished", "failed", "finished"]


def test_a_batch_interrupted_in_its_second_job_resumes_the_rest(folder: Path) -> None:
    body = "".join(f'\n[[job]]\nname = "j{i}"\ncontent = "in/{c}.png"\nstyles = "in/s.png"\n'
                   for i, c in enumerate("aba", start=1))
    batch = load_batch(job_file(folder, body))
    events: list = []

    def ctrl_c_in_stage_two_of_j2(event) -> None:
        events.append(event)
        started = [e.name for e in events if isinstance(e, JobStarted)]
        if started[-1:] == ["j2"] and isinstance(event, Step) and event.stage == 1:
            raise KeyboardInterrupt

    first = run_batch(batch, ctrl_c_in_stage_two_of_j2)

    assert [o.status for o in first.outcomes] == ["finished", "interrupted", "pending"]
    assert "run the same batch command again to resume" in first.stopped
    assert [r["status"] for r in manifest(folder).values()] == ["finished", "interrupted", "pending"]
    assert not first.sheets

    events = []
    second = run_batch(load_batch(folder / "jobs.toml"), events.append)

    assert [e.name for e in events if isinstance(e, JobStarted)] == ["j2", "j3"]  # j1 skipped
    assert [o.status for o in second.outcomes] == ["finished"] * 3 and not second.stopped
    assert second.outcomes[0].skipped
    assert second.outcomes[1].stages_reused == 1  # j2 went on from its finished first stage
    assert [e.stage for e in events if isinstance(e, StageStarted)] == [1, 0, 1]
    assert sorted(p.name for p in (folder / "out").glob("*.png")) == ["j1.png", "j2.png", "j3.png"]


def test_a_changed_job_is_rendered_again_from_scratch(folder: Path) -> None:
    body = '\n[[job]]\nname = "j"\ncontent = "in/a.png"\nstyles = "in/s.png"\noverrides.pyramid = { max_size = 32 }\n'
    run_batch(load_batch(job_file(folder, body)))
    events: list = []
    run_batch(load_batch(job_file(folder, body + "overrides.loss = { style_weight = 2.0 }\n")), events.append)
    assert [e.stage for e in events if isinstance(e, StageStarted)] == [0]  # not skipped, not resumed
    assert manifest(folder)["j"]["status"] == "finished"


GRID = """
[[grid]]
name = "sweep"
contents = ["in/a.png", "in/b.png"]
styles = ["in/s.png"]
vary = { "loss.style_weight" = [1.0, 1000.0] }
overrides.pyramid = { max_size = 32, iterations = [4] }  # one stage: 32x27 and 27x32
"""
# Four iterations: a stage hands on the best point it evaluated, and two evaluate only one step,
# which L-BFGS may reject (then both weights would hand on the photo).


def test_a_grid_of_two_contents_by_two_style_weights_makes_four_outputs_and_a_contact_sheet(folder: Path) -> None:
    result = run_batch(load_batch(job_file(folder, GRID)))

    assert [o.name for o in result.outcomes] == [
        "sweep-a-s-style_weight=1.0", "sweep-a-s-style_weight=1000.0",
        "sweep-b-s-style_weight=1.0", "sweep-b-s-style_weight=1000.0"]
    assert [o.status for o in result.outcomes] == ["finished"] * 4
    outputs = sorted((folder / "out" / "sweep").glob("*.png"))
    assert [p.name for p in outputs] == ["a-s-style_weight=1.0.png", "a-s-style_weight=1000.0.png",
                                         "b-s-style_weight=1.0.png", "b-s-style_weight=1000.0.png"]
    weak, strong = (images.load_image(p) for p in outputs[:2])
    assert not np.array_equal(weak, strong)  # the varied setting reached the renders
    records = manifest(folder)
    assert [(r["row"], r["col"]) for r in records.values()] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    settings = json.loads((outputs[1].parent / f"{outputs[1].name}.json").read_text())
    assert settings["config"]["loss"]["style_weight"] == 1000.0
    [sheet] = result.sheets
    assert sheet == folder / "out" / "sweep-sheet.png"
    height, width = images.load_image(sheet).shape[:2]
    assert height == CAPTION + 2 * (32 + GAP) + GAP  # a label row, then two rows of 32 px cells
    assert width > 2 * 32


def test_a_failed_grid_cell_is_grey_on_the_sheet(folder: Path) -> None:
    grid = GRID.replace('"in/b.png"', '"in/gone.png"').replace("[1.0, 1000.0]", "[1.0]")
    result = run_batch(load_batch(job_file(folder, grid)))
    assert [o.status for o in result.outcomes] == ["finished", "failed"]
    sheet = images.load_image(result.sheets[0])
    grey = np.isclose(sheet, 0.85, atol=0.01).all(axis=2)
    assert grey.sum() >= 32 * 27  # a placeholder the size of the finished cell


@pytest.mark.parametrize("entry, expected", [
    ('output = "../escape.png"', "outside the batch's output folder"),
    ('output = "/tmp/elsewhere.png"', "outside the batch's output folder"),
    ('output = "work/x.png"', "reserved"),
    ('output = "x.gif"', "unsupported extension"),
    ('colour = "red"', "unknown key 'colour'"),
    ('overrides = { loss = { style_wieght = 2.0 } }', "unknown setting loss.style_wieght"),
    ('overrides = { pyramid = { max_size = "big" } }', "pyramid.max_size (--max-size) must be an integer"),
    ('overrides = { loss = { style_weight = -1.0 } }', "--style-weight (loss.style_weight) must be >= 0"),
    ('overrides = { output = { work_dir = "w" } }', "work_dir cannot be set in a batch"),
    ('overrides = { lossy = { x = 1 } }', "unknown section overrides.lossy"),
    ('preset = "huge"', "unknown preset 'huge'"),
    ('name = "a/b"', "name must be letters"),
])
def test_job_file_mistakes_name_the_job_and_the_file(folder: Path, entry: str, expected: str) -> None:
    name = "" if entry.startswith("name") else 'name = "j"\n'
    path = job_file(folder, f'\n[[job]]\n{name}content = "in/a.png"\nstyles = "in/s.png"\n{entry}\n')
    with pytest.raises(ConfigError) as error:
        load_batch(path)
    assert expected in str(error.value) and str(path) in str(error.value)
    assert not (folder / "out").exists()


def test_grid_patterns_make_a_row_per_photo_and_a_column_per_painting(folder: Path) -> None:
    (folder / "styles").mkdir()
    (folder / "styles" / "notes.txt").write_text("not an image")
    write_image(folder / "styles" / "x.jpg", 32, 32, 3)
    write_image(folder / "styles" / "y.png", 32, 32, 4)
    body = ('\n[[grid]]\nname = "all"\ncontents = ["in/[ab].png"]\n'
            'styles = ["styles/*", ["in/s.png", "styles/x.jpg"]]\n')
    batch = load_batch(job_file(folder, body))
    assert [job.name for job in batch.jobs] == ["all-a-x", "all-a-y", "all-a-s+x", "all-b-x", "all-b-y", "all-b-s+x"]
    assert batch.grids[0].rows == ("a", "b") and batch.grids[0].cols == ("x", "y", "s+x")
    assert batch.jobs[1].render.styles == (folder / "styles" / "y.png",)


@pytest.mark.parametrize("grid, expected", [
    ('contents = ["photos/*.jpg"]\nstyles = ["in/s.png"]', "'photos/*.jpg' matches no image"),
    ('contents = ["in/*.png"]\nstyles = [["in/s.png", "in/*.png"]]', "patterns (*, ?, [) only stand alone"),
])
def test_a_grid_pattern_that_finds_nothing_stops_the_batch_before_it_starts(folder: Path, grid: str,
                                                                            expected: str) -> None:
    path = job_file(folder, f'\n[[grid]]\nname = "g"\n{grid}\n')
    with pytest.raises(ConfigError) as error:
        load_batch(path)
    assert expected in str(error.value) and str(path) in str(error.value)


def test_two_jobs_with_one_name_are_refused(folder: Path) -> None:
    job = '\n[[job]]\ncontent = "in/a.png"\nstyles = "in/s.png"\n'
    with pytest.raises(ConfigError, match="two jobs are named 'a-s'"):
        load_batch(job_file(folder, job * 2))


def test_an_unwritable_output_folder_fails_before_any_job(folder: Path, render_calls: list[str]) -> None:
    (folder / "blocker").write_text("a file where the output folder should be")
    path = job_file(folder, THREE_JOBS).read_text().replace('output_dir = "out"', 'output_dir = "blocker/out"')
    (folder / "jobs.toml").write_text(path)
    with pytest.raises(OutputError, match="cannot write to the batch's output folder"):
        run_batch(load_batch(folder / "jobs.toml"))
    assert render_calls == []


def test_a_full_disk_fails_before_any_job(folder: Path, render_calls: list[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 2**20, 2**20))
    with pytest.raises(OutputError, match="not enough disk space"):
        run_batch(load_batch(job_file(folder, THREE_JOBS)))
    assert render_calls == [] and not (folder / "out" / "manifest.json").exists()


def test_two_cpu_workers_share_the_jobs_and_ctrl_c_stops_them_cleanly(folder: Path) -> None:
    quick = '\n[[job]]\nname = "p{0}"\ncontent = "in/{1}.png"\nstyles = "in/s.png"\n'
    # never converges early
    slow = quick + 'overrides.pyramid = {{ iterations = [5000] }}\noverrides.optim = {{ tolerance = 0.0 }}\n'
    body = quick.format(1, "a") + quick.format(2, "b") + slow.format(3, "a") + slow.format(4, "b")

    events: list = []

    def ctrl_c_once_the_slow_ones_run(event) -> None:
        events.append(event)
        started = [e.name for e in events if isinstance(e, JobStarted)]
        if isinstance(event, JobStarted) and {"p3", "p4"} <= set(started):
            os.kill(os.getpid(), signal.SIGINT)

    result = run_batch(load_batch(job_file(folder, body)), ctrl_c_once_the_slow_ones_run, devices=["cpu", "cpu"])

    kinds = [type(e).__name__ for e in events if isinstance(e, (JobStarted, JobFinished))]
    assert kinds[:2] == ["JobStarted", "JobStarted"]  # two jobs at once, one per worker
    assert [o.status for o in result.outcomes] == ["finished", "finished", "interrupted", "interrupted"]
    assert (folder / "out" / "p1.png").is_file() and (folder / "out" / "p2.png").is_file()
    assert "batch interrupted" in result.stopped and "run the same batch command again" in result.stopped
    records = manifest(folder)
    assert [r["status"] for r in records.values()] == ["finished", "finished", "interrupted", "interrupted"]
    assert {r["device"] for r in records.values()} == {"cpu"}
    assert multiprocessing.active_children() == []  # both workers stopped and were joined
    assert "interrupted" in (folder / "out" / records["p3"]["log"]).read_text()


def _docs_block(after: str) -> str:
    text = (ROOT / "docs" / "batches.md").read_text()
    return text[text.index(after):].split("```toml\n", 1)[1].split("```", 1)[0]


def test_the_docs_job_file_example_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "night.toml"
    path.write_text(_docs_block("## Batches"))
    for name in ("photos/harbour.jpg", "photos/tower.jpg", "paintings/scream.jpg", "paintings/shipwreck.jpg",
                 "paintings/starry_night.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        write_image(tmp_path / name, 32, 32, 0)
    batch = load_batch(path)
    assert batch.output_dir == tmp_path / "night"
    album = [f"album-{photo}-{style}" for photo in ("harbour", "tower")
             for style in ("scream", "shipwreck", "starry_night", "scream+shipwreck")]
    assert [job.name for job in batch.jobs] == [
        "harbour", "tower-blend", "sweep-harbour-starry_night-style_weight=5.0",
        "sweep-harbour-starry_night-style_weight=50.0", "sweep-tower-starry_night-style_weight=5.0",
        "sweep-tower-starry_night-style_weight=50.0", *album]
    harbour, blend = batch.jobs[0].render, batch.jobs[1].render
    assert harbour.content == tmp_path / "photos" / "harbour.jpg"
    assert harbour.output == tmp_path / "night" / "harbour.tif"
    assert harbour.config.print.print_size == "A3" and harbour.config.output.bit_depth == 16
    assert blend.config.pyramid.max_size == 512 and blend.config.loss.style_blend == (0.7, 0.3)
    assert blend.output == tmp_path / "night" / "tower-blend.png"  # the preview preset's format
    assert batch.jobs[3].render.config.loss.style_weight == 50.0
    assert batch.jobs[3].render.output == tmp_path / "night" / "sweep" / "harbour-starry_night-style_weight=50.0.tif"


def test_the_job_log_has_a_line_per_tenth_of_a_stage_however_sparse_the_reports() -> None:
    from hires_nst.batch.job import _log_line

    def logged(iterations: int, every: int) -> list[int]:
        reports = [*range(every, iterations, every), iterations]
        steps = [Step(0, i, iterations, {"total": 1.0}, 0.1, covered=i - previous)
                 for previous, i in pairwise([0, *reports])]
        return [step.iteration for step in steps if _log_line(step)]

    assert logged(33, 1) == [*range(3, 34, 3)]
    assert logged(33, 10) == [10, 20, 30, 33]  # --sync-every 10 (CUDA): no tenth goes unlogged


def test_a_job_left_running_by_a_dead_run_is_recorded_as_interrupted(folder: Path) -> None:
    from hires_nst.batch.job import Ledger

    batch = load_batch(job_file(folder, '\n[[job]]\nname = "j"\ncontent = "in/a.png"\nstyles = "in/s.png"\n'))
    [job] = batch.jobs
    ledger = Ledger(batch, {"j": {"status": "running", "spec": job.spec}})  # a power cut mid-render
    assert ledger.records["j"]["status"] == "interrupted"


def test_a_grid_sheet_may_not_overwrite_a_job_output(folder: Path) -> None:
    body = ('\n[[job]]\ncontent = "in/a.png"\nstyles = "in/s.png"\noutput = "g-sheet.png"\n'
            '\n[[grid]]\nname = "g"\ncontents = ["in/b.png"]\nstyles = ["in/s.png"]\n')
    with pytest.raises(ConfigError, match="contact sheet .*g-sheet.png is also the output of"):
        load_batch(job_file(folder, body))


def test_a_worker_pins_its_gpu_so_a_job_cannot_reach_the_others() -> None:
    from hires_nst.batch.parallel import pin_device
    from hires_nst.config.devices import DeviceName

    env: dict[str, str] = {}
    assert pin_device(DeviceName("cuda", 1), env) == "cuda:0" and env["CUDA_VISIBLE_DEVICES"] == "1"
    env = {"CUDA_VISIBLE_DEVICES": "4,6"}  # the parent's own view: cuda:1 is physical GPU 6
    assert pin_device(DeviceName("cuda", 1), env) == "cuda:0" and env["CUDA_VISIBLE_DEVICES"] == "6"
    env = {}
    assert pin_device(DeviceName("cpu"), env) == "cpu" and env["CUDA_VISIBLE_DEVICES"] == ""
    with pytest.raises(Exception, match="has no such device"):
        pin_device(DeviceName("cuda", 2), {"CUDA_VISIBLE_DEVICES": "0,1"})


def test_a_workers_job_runs_on_its_device_only_whatever_its_devices_say(folder: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    monkeypatch.setattr(hires_nst.batch.job, "render", lambda job, sink: seen.append(job.config.device) or
                        (_ for _ in ()).throw(ConfigError("stop here")))
    job = load_batch(job_file(folder, '[[job]]\nname = "x"\ncontent = "in/a.png"\nstyles = ["in/s.png"]\n'
                                      'overrides = { device = { devices = "cpu,cpu" } }\n')).jobs[0]
    outcome = hires_nst.batch.job.run_job(job, False, device="cpu", label="cuda:1")
    assert seen[0].device == "cpu" and seen[0].devices == "" and outcome.device == "cuda:1"


# --- issue 21: what a batch may write, decided before any job runs --------------------------------------


def _in_place(folder: Path, body: str) -> Path:
    """A job file whose outputs land beside it (``output_dir = "."``), among the user's images."""
    path = folder / "jobs.toml"
    path.write_text('output_dir = "."\n[defaults]\npreset = "tiny.toml"\n' + body)
    return path


WRITER = '\n[[job]]\nname = "x"\ncontent = "in/a.png"\nstyles = ["in/s.png"]\n{writes}\n'
READER = '\n[[job]]\nname = "y"\ncontent = "{content}"\nstyles = ["{style}"]\n'


@pytest.mark.parametrize("order", ["writer first", "reader first"])
@pytest.mark.parametrize("written, writes", [
    ("style.png", 'output = "style.png"'),
    ("x.png.json", ""),  # the settings beside job x's output
    ("anim/x.gif", 'overrides.output = { animate = "anim/{name}.gif" }'),
])
def test_a_batch_never_writes_over_any_jobs_input_in_either_order(folder: Path, render_calls: list[str],
                                                                   order: str, written: str, writes: str) -> None:
    painting = folder / written
    painting.parent.mkdir(parents=True, exist_ok=True)
    os.replace(write_image(folder / "painting.png", 40, 40, 5), painting)  # a PNG, whatever its name says
    before = painting.read_bytes()
    jobs = [WRITER.format(writes=writes), READER.format(content="in/b.png", style=written)]
    path = _in_place(folder, "".join(jobs if order == "writer first" else jobs[::-1]))

    with pytest.raises(OutputError) as caught:
        run_batch(load_batch(path))

    message = str(caught.value)
    assert str(painting) in message and "job 'y'" in message and "\n" not in message
    assert render_calls == [] and painting.read_bytes() == before
    assert not (folder / "manifest.json").exists() and not (folder / "work" / "x" / "job.log").exists()


def test_a_stage_image_of_a_batch_job_may_not_be_another_jobs_input(folder: Path, render_calls: list[str]) -> None:
    path = _in_place(folder, WRITER.format(writes=""))
    run_batch(load_batch(path))
    stage = folder / "work" / "x" / "stage-0.png"
    before = stage.read_bytes()
    path.write_text(path.read_text() + READER.format(content="in/b.png", style="work/x/stage-0.png"))
    with pytest.raises(OutputError, match=r"style image 1 of job 'y' .*stage-0.png is inside the work dir of job 'x'"):
        run_batch(load_batch(path), restart=True)
    assert render_calls == ["a.png"] and stage.read_bytes() == before


def test_a_grid_contact_sheet_never_overwrites_a_photo(folder: Path, render_calls: list[str]) -> None:
    write_image(folder / "g-sheet.png", 48, 40, 6)
    before = (folder / "g-sheet.png").read_bytes()
    path = _in_place(folder, '\n[[grid]]\nname = "g"\ncontents = ["g-sheet.png"]\nstyles = ["in/s.png"]\n')
    result = runner.invoke(app, ["batch", str(path), "-q"])
    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert "contact sheet of grid 'g'" in line and "would overwrite" in line
    assert render_calls == [] and (folder / "g-sheet.png").read_bytes() == before


def test_a_batch_output_name_too_long_for_its_temp_file_is_refused_before_rendering(
        folder: Path, render_calls: list[str]) -> None:
    limit = os.pathconf(folder, "PC_NAME_MAX")
    name = "x" * (limit - 14) + ".png"  # a legal name; its ".NAME.XXXXXXXX.part" is not
    body = THREE_JOBS + f'\n[[job]]\nname = "long"\ncontent = "in/a.png"\nstyles = "in/s.png"\noutput = "{name}"\n'
    with pytest.raises(OutputError, match=r"job 'long'.*too long.*shorter"):
        run_batch(load_batch(job_file(folder, body)))
    assert render_calls == []


def test_a_batch_work_dir_holding_foreign_files_is_refused(folder: Path, render_calls: list[str]) -> None:
    (folder / "out" / "work" / "first").mkdir(parents=True)
    (folder / "out" / "work" / "first" / "thesis.tex").write_text("four years")
    with pytest.raises(ConfigError, match=r"work dir .*first holds files hires-nst did not write \(thesis.tex\)"):
        run_batch(load_batch(job_file(folder, THREE_JOBS)))
    assert render_calls == [] and (folder / "out" / "work" / "first" / "thesis.tex").read_text() == "four years"


def test_a_batch_work_dir_of_an_earlier_version_is_taken_back(folder: Path) -> None:
    """Before the marker, a job whose photo was missing left a work dir holding only its log."""
    result = run_batch(load_batch(job_file(folder, THREE_JOBS)))
    assert [o.status for o in result.outcomes] == ["finished", "failed", "finished"]
    for marker in (folder / "out" / "work").glob(f"*/{WORK_MARKER}"):
        marker.unlink()
    write_image(folder / "in" / "nope.png", 40, 40, 3)
    again = run_batch(load_batch(folder / "jobs.toml"))
    assert [o.status for o in again.outcomes] == ["finished"] * 3
    assert (folder / "out" / "work" / "missing" / WORK_MARKER).is_file()


class _Hung(BaseException):  # not an Exception: code that swallows those must not swallow this
    pass


@pytest.fixture
def deadline():
    """Fail a test that blocks (e.g. opening a FIFO nobody writes) instead of hanging the suite."""
    def alarm(signum, frame):
        raise _Hung("blocked for 20 s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_a_fifo_as_a_batch_photo_fails_its_job_at_once(folder: Path, deadline: None) -> None:
    os.mkfifo(folder / "in" / "pipe.png")
    body = THREE_JOBS.replace("in/nope.png", "in/pipe.png")
    result = run_batch(load_batch(job_file(folder, body)))
    assert [o.status for o in result.outcomes] == ["finished", "failed", "finished"]
    assert result.outcomes[1].error == f"content image is not a file: {folder / 'in' / 'pipe.png'}"


def test_a_fifo_as_the_job_file_is_refused_at_once(folder: Path, deadline: None) -> None:
    os.mkfifo(folder / "jobs.toml")
    result = runner.invoke(app, ["batch", str(folder / "jobs.toml"), "-q"])
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line == f"error: job file is not a file: {folder / 'jobs.toml'}"


def test_a_second_batch_run_on_one_output_folder_is_refused_with_the_pid_and_the_first_finishes(
        folder: Path) -> None:
    body = "".join(f'\n[[job]]\nname = "j{i}"\ncontent = "in/a.png"\nstyles = "in/s.png"\n' for i in (1, 2))
    path = job_file(folder, body)
    refused: list[Exception] = []

    def second_run_during_the_first(event) -> None:
        if isinstance(event, JobStarted) and event.name == "j1":
            with pytest.raises(OutputError) as caught:
                run_batch(load_batch(path))
            refused.append(caught.value)

    first = run_batch(load_batch(path), second_run_during_the_first)

    assert len(refused) == 1 and f"another batch run (pid {os.getpid()})" in str(refused[0])
    assert [o.status for o in first.outcomes] == ["finished", "finished"]
    assert [r["status"] for r in manifest(folder).values()] == ["finished", "finished"]
    assert run_batch(load_batch(path)).outcomes[0].skipped  # the lock went with the first run


def test_a_second_batch_command_is_one_line_naming_the_holder(folder: Path) -> None:
    from hires_nst.io.worklock import BATCH_LOCK

    path = job_file(folder, THREE_JOBS)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder / "out"), BATCH_LOCK],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = runner.invoke(app, ["batch", str(path), "-q"])
        assert result.exit_code == 1
        [line] = result.stderr.splitlines()
        assert f"in use by another batch run (pid {holder.pid})" in line
        assert not (folder / "out" / "manifest.json").exists()
    finally:
        holder.kill()
        holder.wait()


HOLDER = """
import fcntl, os, sys, time
os.makedirs(sys.argv[1], exist_ok=True)
handle = open(os.path.join(sys.argv[1], sys.argv[2]), "a+")
fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
handle.seek(0); handle.truncate(); handle.write(str(os.getpid())); handle.flush()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.mark.parametrize("value", ["5", "true", "[\"out\"]", "{ a = 1 }"])
def test_an_output_dir_that_is_no_string_is_a_usage_error_naming_it(folder: Path, value: str) -> None:
    path = folder / "jobs.toml"
    path.write_text(f'output_dir = {value}\n[[job]]\ncontent = "in/a.png"\nstyles = "in/s.png"\n')
    with pytest.raises(ConfigError, match=f"{path}: output_dir must be a folder name"):
        load_batch(path)
    result = CliRunner().invoke(app, ["batch", str(path), "-q"])
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and "output_dir" in result.stderr
    assert "internal error" not in result.stderr


class _CountingList(list):
    """A list that counts the items every pass over it visits."""

    visits = 0

    def __iter__(self):
        for item in super().__iter__():
            _CountingList.visits += 1
            yield item


def test_reading_a_job_file_checks_names_in_linear_time(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hires_nst.batch.jobs

    real_init = hires_nst.batch.jobs._Reader.__init__

    def counting_init(self, *args) -> None:
        real_init(self, *args)
        self.jobs, self.grids = _CountingList(), _CountingList()

    monkeypatch.setattr(hires_nst.batch.jobs._Reader, "__init__", counting_init)
    monkeypatch.setattr(_CountingList, "visits", 0)
    jobs = 120
    body = "".join(f'\n[[job]]\nname = "j{i}"\ncontent = "in/a.png"\nstyles = "in/s.png"\n' for i in range(jobs))
    assert len(load_batch(job_file(folder, body)).jobs) == jobs
    assert _CountingList.visits <= 3 * jobs  # each job looked at a few times, not once per other job
