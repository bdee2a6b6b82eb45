"""Never lose a night (issue 16): full disks, work dirs shared or left behind, resumes from elsewhere,
outputs over inputs, batch animations, panoramas, leftovers of kill -9, misleading messages, stage
counts, and a resumed job's time. Renders are tiny (32 -> 48 px, a few iterations, two shallow layers)."""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import hires_nst.engine.render
from hires_nst.batch.jobs import load_batch
from hires_nst.batch.run import run_batch
from hires_nst.cli.main import app
from hires_nst.config.schedule import make_schedule, stage_long_sides
from hires_nst.config.settings import resolve
from hires_nst.engine import pyramid
from hires_nst.engine.plan import min_side
from hires_nst.engine.render import RenderJob, render
from hires_nst.engine.resume import work_dir_of
from hires_nst.errors import ConfigError, HiresNSTError, Interrupted, OutputError, WeightsError
from hires_nst.events import Message, StageStarted, Step
from hires_nst.io import images, trace
from tests.helpers.synthetic import write_image

runner = CliRunner()
SHALLOW = {"content_layers": ["conv2_1"], "style_layers": ["conv1_1", "conv2_1"]}


def _job(tmp_path: Path, out: Path | None = None, work: bool = True, **settings) -> RenderJob:
    """32 -> 48 px, 3 + 2 iterations; its work dir in tmp_path/work unless ``work`` is False."""
    content = tmp_path / "c.png"
    style = tmp_path / "s.png"
    if not content.exists():
        write_image(content, 48, 40, 0)
        write_image(style, 40, 40, 1)
    layers: dict = {"pyramid": {"min_size": 32, "max_size": 48, "iterations": [3, 2]}, "loss": dict(SHALLOW),
                    "device": {"precision": "fp32"}}
    if work:
        layers["output"] = {"work_dir": str(tmp_path / "work")}
    for section, values in settings.items():
        layers.setdefault(section, {}).update(values)
    return RenderJob(content, (style,), out or tmp_path / "out.png", resolve(("test", layers)))


def _with(job: RenderJob, **changes) -> RenderJob:
    return RenderJob(**{**job.__dict__, **changes})


def _stop_in_stage_two(event) -> None:
    if isinstance(event, Step) and event.stage == 1:
        raise KeyboardInterrupt


def _started(events) -> list[int]:
    return [e.stage for e in events if isinstance(e, StageStarted)]


# --- 1. a full disk -----------------------------------------------------------------------------------


class _Disk:
    """Simulates a disk that fills up: while ``full``, every write of a file opened through the
    patched ``open``/``os.fdopen`` writes half of what it is given and raises ENOSPC."""

    def __init__(self) -> None:
        self.full = False
        self.refused = 0

    def wrap(self, handle):
        disk = self

        class Handle:
            def __getattr__(self, name):
                return getattr(handle, name)

            def __enter__(self):
                handle.__enter__()
                return self

            def __exit__(self, *exc):
                return handle.__exit__(*exc)

            def write(self, data):
                if disk.full:
                    disk.refused += 1
                    handle.write(data[: len(data) // 2])
                    handle.flush()
                    raise OSError(errno.ENOSPC, "No space left on device")
                return handle.write(data)

        return Handle()


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> _Disk:
    import hires_nst.io.safety

    disk = _Disk()
    real_open, real_fdopen = open, os.fdopen
    monkeypatch.setattr(trace, "open", lambda *a, **k: disk.wrap(real_open(*a, **k)), raising=False)
    monkeypatch.setattr(images.os, "fdopen", lambda *a, **k: disk.wrap(real_fdopen(*a, **k)))
    monkeypatch.setattr(hires_nst.io.safety, "DISK_FULL_WAITS", (0.0, 0.0), raising=False)
    return disk


def test_trace_rows_survive_a_full_disk_and_come_back_once_there_is_room(tmp_path: Path, disk: _Disk) -> None:
    from hires_nst.events import StageStarted as Started

    messages: list = []
    writer = trace.TraceWriter(tmp_path / "trace.csv", report=messages.append)
    writer(Started(0, 1, 8, 6, 5))
    writer(Step(0, 1, 5, {"total": 1.0}, 0.1, 0))
    disk.full = True
    writer(Step(0, 2, 5, {"total": 0.9}, 0.1, 0))  # no exception: the render goes on
    writer(Step(0, 3, 5, {"total": 0.8}, 0.1, 0))
    assert disk.refused and any("trace" in m.text and "space" in m.text for m in messages)
    disk.full = False
    writer(Step(0, 4, 5, {"total": 0.7}, 0.1, 0))
    writer.close()
    assert [row["iteration"] for row in trace.read_trace(tmp_path / "trace.csv")] == ["1", "2", "3", "4"]


def test_a_torn_last_trace_row_is_dropped_on_read_and_a_resume_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "trace.csv"
    writer = trace.TraceWriter(path)
    writer(StageStarted(0, 2, 8, 6, 5))
    for iteration in (1, 2):
        writer(Step(0, iteration, 5, {"total": 1.0}, 0.25, 0))
    writer.close()
    with open(path, "a") as handle:
        handle.write("0,8,6,3,0.9")  # the disk filled up in the middle of the row
    assert [row["iteration"] for row in trace.read_trace(path)] == ["1", "2"]
    resumed = trace.TraceWriter(path, keep_stages=1)  # used to raise ValueError, so every --resume died
    assert resumed.elapsed == pytest.approx(0.5)
    resumed.close()


def test_a_full_disk_mid_render_stops_with_exit_1_the_resume_command_and_a_settled_status(
        tmp_path: Path, disk: _Disk, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "c.png", 48, 40, 0)
    write_image(tmp_path / "s.png", 40, 40, 1)
    real = hires_nst.engine.render.render

    def filling(job, sink):
        def watch(event):
            if isinstance(event, StageStarted) and event.stage == 1:
                disk.full = True  # stage 1 is saved; from here on nothing fits
            sink(event)
        return real(job, watch)

    monkeypatch.setattr(hires_nst.engine.render, "render", filling)
    args = ["render", "c.png", "s.png", "-o", "out.png", "--min-size", "32", "--max-size", "48",
            "--iterations", "3,2", "--content-layers", "conv2_1", "--style-layers", "conv1_1,conv2_1", "-q"]
    result = runner.invoke(app, args)

    assert result.exit_code == 1, result.output
    [line] = result.stderr.splitlines()
    assert "No space left on device" in line and "1 finished stage" in line
    assert f"hires-nst render {tmp_path / 'c.png'} {tmp_path / 's.png'} --output {tmp_path / 'out.png'} " in line
    assert line.endswith("--quiet --resume")
    work = tmp_path / "out.png.work"
    assert json.loads((work / "status.json").read_text())["state"] == "failed"
    assert not list(work.glob(".*.part")) and not (tmp_path / "out.png").exists()

    disk.full = False
    monkeypatch.setattr(hires_nst.engine.render, "render", real)
    events: list = []
    again = real(_with(_job(tmp_path, tmp_path / "out.png", work=False), resume=True), events.append)
    assert again.stages_reused == 1 and _started(events) == [1]


def test_a_status_write_that_fails_never_leaves_status_running(tmp_path: Path, disk: _Disk) -> None:
    def fill_then_fail(event) -> None:
        if isinstance(event, StageStarted) and event.stage == 1:
            disk.full = True
        if isinstance(event, Step) and event.stage == 1:
            raise RuntimeError("a bug in stage 2")

    with pytest.raises(RuntimeError):
        render(_job(tmp_path), fill_then_fail)
    status = json.loads((tmp_path / "work" / "status.json").read_text())
    assert status["state"] == "failed" and "a bug in stage 2" in status["error"]


# --- 2. the work dir: absolute, beside the output; --resume never starts afresh silently -------------


def test_the_default_work_dir_is_absolute_and_beside_the_output(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    job = _with(_job(tmp_path, work=False), output=Path("prints/out"))
    assert work_dir_of(job) == tmp_path / "prints" / "out.png.work"


def test_resume_from_another_directory_finds_the_finished_stages(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    job = _job(tmp_path, tmp_path / "out.png", work=False)
    with pytest.raises(Interrupted, match=str(tmp_path / "out.png.work")):
        render(job, _stop_in_stage_two)
    monkeypatch.chdir(tmp_path / "b")
    events: list = []
    assert render(_with(job, resume=True), events.append).stages_reused == 1
    assert _started(events) == [1]


def test_resume_goes_on_from_an_older_default_work_dir_under_outputs_work(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from hires_nst.engine.resume import legacy_work_dir

    monkeypatch.chdir(tmp_path)
    job = _job(tmp_path, tmp_path / "out.png", work=False)
    legacy = legacy_work_dir(job)
    assert legacy == tmp_path / "outputs" / "work" / f"out-{legacy.name.split('-')[-1]}"
    old = _with(job, config=resolve(("test", {**job.config.to_dict(), "output": {"work_dir": str(legacy)}})))
    with pytest.raises(Interrupted):
        render(old, _stop_in_stage_two)  # as a render of an earlier version left it
    events: list = []
    assert render(_with(job, resume=True), events.append).stages_reused == 1
    assert any(str(legacy) in e.text for e in events if isinstance(e, Message))


def test_resume_with_nothing_to_resume_is_an_error_naming_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"--resume: no render to resume in {tmp_path / 'work'}"):
        render(_with(_job(tmp_path), resume=True))
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("change", [{"iterations": [4, 2]}, {"min_size": 24}], ids=["iterations", "size"])
def test_resume_with_another_first_stage_is_refused(tmp_path: Path, change: dict) -> None:
    with pytest.raises(Interrupted):
        render(_job(tmp_path), _stop_in_stage_two)
    with pytest.raises(ConfigError, match="--resume:.*first stage was 32x27, 3 iterations"):
        render(_with(_job(tmp_path, pyramid=change), resume=True))
    assert (tmp_path / "work" / "stage-0.pt").is_file()


def test_resume_with_an_unreadable_settings_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Interrupted):
        render(_job(tmp_path), _stop_in_stage_two)
    (tmp_path / "work" / "settings.json").write_text('{"fingerprint": {"inp')
    with pytest.raises(ConfigError, match="settings.json"):
        render(_with(_job(tmp_path), resume=True))
    with pytest.raises(ConfigError, match="unfinished render"):
        render(_job(tmp_path))
    assert (tmp_path / "work" / "stage-0.pt").is_file()


def test_the_cli_hands_the_engine_an_absolute_resume_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             fake_render: list[RenderJob]) -> None:
    jobs = fake_render
    monkeypatch.chdir(tmp_path)
    write_image(tmp_path / "my photo.png")
    result = runner.invoke(app, ["render", "my photo.png", "my photo.png", "-o", "o.png", "--restart", "-q"])
    assert result.exit_code == 0, result.output
    photo = shlex.quote(str(tmp_path / "my photo.png"))
    assert jobs[0].resume_command == f"hires-nst render {photo} {photo} --output {tmp_path / 'o.png'} --quiet --resume"


# --- 3, 4. --resume with --restart; two renders in one work dir ------------------------------------


def test_resume_and_restart_together_are_refused_and_keep_the_work(tmp_path: Path) -> None:
    with pytest.raises(Interrupted):
        render(_job(tmp_path), _stop_in_stage_two)
    with pytest.raises(ConfigError, match="--resume and --restart"):
        render(_with(_job(tmp_path), resume=True, restart=True))
    assert (tmp_path / "work" / "stage-0.pt").is_file()


HOLDER = """
import fcntl, os, sys, time
os.makedirs(sys.argv[1], exist_ok=True)
handle = open(os.path.join(sys.argv[1], "lock"), "a+")
fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
handle.seek(0); handle.truncate(); handle.write(str(os.getpid())); handle.flush()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_work_dir_in_use_by_another_process_is_refused_with_its_pid_even_with_restart(tmp_path: Path) -> None:
    with pytest.raises(Interrupted):
        render(_job(tmp_path), _stop_in_stage_two)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "work")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for job in (_with(_job(tmp_path), resume=True), _with(_job(tmp_path), restart=True)):
            with pytest.raises(OutputError, match=f"in use by another render \\(pid {holder.pid}\\)"):
                render(job)
        assert (tmp_path / "work" / "stage-0.pt").is_file()
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed holder's lock goes with it
        holder.wait()
    assert render(_with(_job(tmp_path), resume=True)).stages_reused == 1


# --- 5, 6. outputs over inputs; batch animations -----------------------------------------------------


@pytest.mark.parametrize("role", ["content", "style", "init", "link to the content"])
def test_an_output_that_is_an_input_is_refused_and_the_input_kept(tmp_path: Path, role: str) -> None:
    job = _job(tmp_path)
    target = {"content": job.content, "style": job.styles[0], "init": tmp_path / "init.png",
              "link to the content": tmp_path / "link.png"}[role]
    if role == "init":
        write_image(target, 48, 40, 3)
        job = _job(tmp_path, optim={"init": str(target)})
    if role.startswith("link"):
        target.symlink_to(job.content)
    before = target.read_bytes()
    with pytest.raises(OutputError, match="would overwrite"):
        render(_with(job, output=target))
    assert target.read_bytes() == before


BATCH = """output_dir = "out"
[defaults]
overrides = {{ pyramid = {{ max_size = 32, iterations = [1] }}, output = {{ animate = "{animate}" }} }}
[[job]]
name = "one"
content = "c.png"
styles = ["s.png"]
{second}"""
SECOND = '[[job]]\nname = "two"\ncontent = "c.png"\nstyles = ["s.png"]\n'


@pytest.mark.parametrize("animate", ["../x.gif", "/tmp/hires-nst-x.gif", "work/one/x.gif"])
def test_a_batch_animation_outside_the_output_folder_is_refused(tmp_path: Path, animate: str) -> None:
    (tmp_path / "jobs.toml").write_text(BATCH.format(animate=animate, second=""))
    with pytest.raises(ConfigError, match="animate"):
        load_batch(tmp_path / "jobs.toml")


def test_batch_animations_land_in_the_output_folder_one_per_job(tmp_path: Path) -> None:
    (tmp_path / "jobs.toml").write_text(BATCH.format(animate="anim.gif", second=SECOND))
    with pytest.raises(ConfigError, match="anim.gif.*also"):
        load_batch(tmp_path / "jobs.toml")  # two jobs would write one file
    (tmp_path / "jobs.toml").write_text(BATCH.format(animate="anim/{name}.gif", second=SECOND))
    batch = load_batch(tmp_path / "jobs.toml")
    assert [job.render.config.output.animate for job in batch.jobs] == [
        str(tmp_path / "out" / "anim" / f"{name}.gif") for name in ("one", "two")]


# --- 7. panoramas and thin images --------------------------------------------------------------------


def test_a_panorama_starts_with_a_first_stage_tall_enough_for_the_network(tmp_path: Path) -> None:
    write_image(tmp_path / "pano.png", 600, 25, 0)
    write_image(tmp_path / "s.png", 40, 40, 1)
    config = resolve(("test", {"pyramid": {"min_size": 64, "max_size": 600, "iterations": [1]},
                               "output": {"work_dir": str(tmp_path / "work")}}))
    events: list = []
    result = render(RenderJob(tmp_path / "pano.png", (tmp_path / "s.png",), tmp_path / "out.png", config),
                    events.append)
    sizes = [(e.width, e.height) for e in events if isinstance(e, StageStarted)]
    assert min(h for _, h in sizes) >= 16 and sizes[0] == (383, 16) and (result.width, result.height) == (600, 25)
    assert any("first stage" in e.text and "383x16" in e.text for e in events if isinstance(e, Message))


def test_a_thin_style_image_is_enlarged_to_the_networks_minimum(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    write_image(tmp_path / "c.png", 48, 40, 0)
    write_image(tmp_path / "thin.png", 300, 4, 1)
    config = resolve(("test", {"pyramid": {"max_size": 32, "iterations": [1]},
                               "output": {"work_dir": str(tmp_path / "work")}}))
    sizes: list[tuple[int, int]] = []  # (height, width) of every style tensor a stage optimises against
    real = pyramid.stage_inputs

    def recording(*args, **kwargs) -> pyramid.StageInputs:
        inputs = real(*args, **kwargs)
        sizes.extend((s.shape[2], s.shape[3]) for s in inputs.styles)
        return inputs

    monkeypatch.setattr(pyramid, "stage_inputs", recording)
    result = render(RenderJob(tmp_path / "c.png", (tmp_path / "thin.png",), tmp_path / "out.png", config))
    assert result.output.is_file()
    # The 300 x 4 strip would be 32 x 0 at the stage's size (style scale 1): it is enlarged until its
    # short side is the network's minimum, keeping its aspect ratio (1200 x 16 for the default layers).
    assert sizes and all(height >= min_side(config) for height, _ in sizes), sizes
    assert all(width / height == pytest.approx(300 / 4, rel=0.02) for height, width in sizes), sizes


def test_an_output_too_thin_for_the_network_is_refused_in_one_line(tmp_path: Path) -> None:
    write_image(tmp_path / "thin.png", 400, 8, 0)
    write_image(tmp_path / "s.png", 40, 40, 1)
    config = resolve(("test", {"pyramid": {"max_size": 64}, "output": {"work_dir": str(tmp_path / "work")}}))
    with pytest.raises(ConfigError, match=r"64x1 .*at least 16 px.*--max-size 799") as caught:
        render(RenderJob(tmp_path / "thin.png", (tmp_path / "s.png",), tmp_path / "out.png", config))
    assert "\n" not in str(caught.value)


def test_make_schedule_raises_the_first_stage_of_a_panorama() -> None:
    stages = make_schedule(6000, 250, max_size=6000, min_size=256, min_short=16)
    assert (stages[0].width, stages[0].height) == (383, 16)  # 383 * 250 / 6000 = 15.96 rounds to 16
    assert stages[-1].long_side == 6000 and all(s.height >= 16 for s in stages)


# --- 8. leftovers of kill -9 ------------------------------------------------------------------------


def test_temp_files_and_stale_progress_are_cleaned_on_open_and_at_the_end(tmp_path: Path) -> None:
    job = _job(tmp_path, output={"save_every": 1})
    with pytest.raises(Interrupted):
        render(job, _stop_in_stage_two)
    work = tmp_path / "work"
    (work / ".stage-1.partial-1.pt.k1LL3d.part").write_bytes(b"x" * 1000)  # kill -9 during a save
    (work / "stage-0.partial-2.pt").write_bytes(b"x" * 1000)  # stage 0 is finished: this outlived it
    (tmp_path / ".out.png.Xy12.part").write_bytes(b"x")  # kill -9 while the output was written
    seen: list[list[str]] = []

    def look(event) -> None:
        if isinstance(event, StageStarted):
            seen.append(sorted(p.name for p in work.iterdir()))

    render(_with(job, resume=True), look)
    assert ".stage-1.partial-1.pt.k1LL3d.part" not in seen[0] and "stage-0.partial-2.pt" not in seen[0]
    left = sorted(p.name for p in work.iterdir())
    assert not [n for n in left if ".part" in n or "partial" in n], left
    assert not list(tmp_path.glob(".out.png*.part"))


# --- 9. messages -------------------------------------------------------------------------------------


def test_a_pickled_weights_file_is_refused_without_torchs_advice_or_warnings(tmp_path: Path) -> None:
    import warnings

    from hires_nst.model.weights import load_weights

    torch.save({"model": torch.nn.Conv2d(3, 4, 3)}, tmp_path / "model.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(WeightsError) as caught:
            load_weights(str(tmp_path / "model.pth"))
    message = str(caught.value)
    assert "not plain tensors" in message and "weights_only" not in message and "trust" not in message


def test_weights_with_nan_are_refused_when_loaded(tmp_path: Path) -> None:
    from hires_nst.model.weights import load_weights

    state = {f"features.{k}": v.clone() for k, v in load_weights("random").state_dict.items()}
    state["features.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(WeightsError, match="features.0.weight.*not finite"):
        load_weights(str(tmp_path / "nan.pth"))


@pytest.mark.parametrize("where", ["content", "output", "work dir"])
def test_a_folder_that_cannot_be_entered_is_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           where: str) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path).startswith(str(locked) + os.sep):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    job = _job(tmp_path, work=where != "work dir")
    if where == "content":
        job = _with(job, content=locked / "c.png")
    elif where == "output":
        job = _with(job, output=locked / "out.png")
    else:
        job = _job(tmp_path, output={"work_dir": str(locked / "work")})
    monkeypatch.setattr(os, "stat", stat)
    with pytest.raises(HiresNSTError, match="Permission denied"):
        render(job)


def test_a_changed_input_is_named_on_resume(tmp_path: Path) -> None:
    job = _job(tmp_path)
    with pytest.raises(Interrupted):
        render(job, _stop_in_stage_two)
    write_image(job.styles[0], 40, 40, 7)
    with pytest.raises(ConfigError, match=r"style image 1 \(.*s\.png\) changed"):
        render(_with(job, resume=True))


def test_message_grammar(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="a list of integers"):
        resolve(("test", {"pyramid": {"iterations": "many"}}))
    with pytest.raises(ConfigError, match="for 1 style image$"):
        render(_job(tmp_path, loss={"style_blend": [0.5, 0.5]}))


def test_the_batch_help_shows_the_job_file_tables() -> None:
    result = runner.invoke(app, ["batch", "--help"], terminal_width=200)
    assert "[[job]]" in result.output and "[[grid]]" in result.output


# --- 10, 11. stage counts; a resumed job's time -------------------------------------------------------


def test_stages_always_grow() -> None:
    sides = stage_long_sides(50, 60, 1.01)
    assert all(b > a for a, b in pairwise(sides)), sides
    assert sides[0] == 50 and sides[-1] == 60


def test_a_scale_factor_that_makes_too_many_stages_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"--scale-factor 1.001 .* stages.*at most"):
        make_schedule(512, 384, max_size=512, min_size=256, factor=1.001)


def test_a_resumed_batch_job_records_its_total_time(tmp_path: Path) -> None:
    write_image(tmp_path / "c.png", 48, 40, 0)
    write_image(tmp_path / "s.png", 40, 40, 1)
    (tmp_path / "jobs.toml").write_text(
        'output_dir = "out"\n[[job]]\nname = "j"\ncontent = "c.png"\nstyles = ["s.png"]\n'
        'overrides = { pyramid = { min_size = 32, max_size = 48, iterations = [3, 1] }, '
        'loss = { content_layers = ["conv2_1"], style_layers = ["conv1_1", "conv2_1"] } }\n')

    def slow_then_stop(event) -> None:
        if isinstance(event, Step) and event.stage == 0:
            time.sleep(1.0)  # the first run's work took 3 s
        _stop_in_stage_two(event)

    assert run_batch(load_batch(tmp_path / "jobs.toml"), slow_then_stop).stopped
    began = time.perf_counter()
    second = run_batch(load_batch(tmp_path / "jobs.toml"))
    this_run = time.perf_counter() - began
    [record] = json.loads((tmp_path / "out" / "manifest.json").read_text())["jobs"]
    assert second.outcomes[0].stages_reused == 1
    assert record["seconds"] >= 3.0 and record["seconds"] > this_run
