"""--average-iterates: the written image is the bias-corrected moving average of a stage's iterates,
a resume continues that average exactly, the average costs no host read, and every rank ends with
the same one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from hires_nst.batch.jobs import load_batch
from hires_nst.config.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, OPTIMIZERS
from hires_nst.config.settings import load_toml, resolve
from hires_nst.core import averaging
from hires_nst.core.averaging import IterateAverage, split_state
from hires_nst.engine import pyramid
from hires_nst.engine.objective import Objective, Weights, make_targets
from hires_nst.engine.optimize import optimize_with_state
from hires_nst.engine.render import RenderJob, render
from hires_nst.engine.resume import fingerprint
from hires_nst.errors import ConfigError, Interrupted
from hires_nst.events import StageFinished
from hires_nst.io import images
from hires_nst.model.features import VGGFeatures
from hires_nst.model.weights import load_weights
from hires_nst.runtime import ranks
from hires_nst.runtime.hostsync import HostCounter
from tests.helpers.paths import CONTENT, STYLE
from tests.helpers.renders import interrupt_at, job

CPU = torch.device("cpu")


class Quadratic:
    """loss = 1/2 |x - target|^2, writing ``x.grad``: an objective whose iterates can be done by hand."""

    def __init__(self, target: Tensor) -> None:
        self.target = target

    def __call__(self, image: Tensor) -> dict[str, Tensor]:
        loss = 0.5 * ((image - self.target) ** 2).sum()
        loss.backward()
        return {"total": loss.detach()}


def test_three_sgd_iterates_are_averaged_with_the_bias_correction_by_hand() -> None:
    # SGD, momentum 0.9, lr 0.5 on 1/2 (x - 0.6)^2 from x0 = 0.2 (a 1x1 image: the pixel scaling is 1):
    #   g0 = -0.4   buf1 = -0.4                     x1 = 0.2  + 0.5 * 0.4   = 0.4
    #   g1 = -0.2   buf2 = 0.9 * -0.4 - 0.2 = -0.56  x2 = 0.4  + 0.5 * 0.56  = 0.68
    #   g2 = 0.08   buf3 = 0.9 * -0.56 + 0.08 = -0.424  x3 = 0.68 + 0.5 * 0.424 = 0.892
    # decay 0.5: sum = 0.5 * (0.5 * (0.5 * 0.4) + 0.5 * 0.68) + 0.5 * 0.892 = 0.666, weight = 1 - 0.5^3 = 0.875:
    # the average is 0.666 / 0.875 (0.666 without the bias correction; 0.892 the last iterate).
    start, target = torch.full((1, 3, 1, 1), 0.2), torch.full((1, 3, 1, 1), 0.6)
    seen: list[float] = []
    last, _ = optimize_with_state(start, Quadratic(target), optimizer="sgd", lr=0.5, iterations=3)
    result, _ = optimize_with_state(start, Quadratic(target), optimizer="sgd", lr=0.5, iterations=3, average=0.5,
                                    on_step=lambda i, v, s, image: seen.append(float(image[0, 0, 0, 0])))
    # without averaging the stage hands on its lowest-loss evaluated point, x2 (x3 is never evaluated)
    assert torch.allclose(last, torch.full_like(last, 0.68), atol=1e-6)
    assert torch.allclose(result, torch.full_like(result, 0.666 / 0.875), atol=1e-6)
    # what the progress reports see is the average so far: x1, then (0.5 * 0.2 + 0.34) / 0.75, then the result
    assert seen == pytest.approx([0.4, 0.44 / 0.75, 0.666 / 0.875], abs=1e-6)


def test_the_moving_average_resumed_from_its_buffers_equals_the_unbroken_one() -> None:
    iterates = [torch.rand(1, 3, 4, 5, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    whole = IterateAverage(0.9, iterates[0])
    for x in iterates:
        whole.update(x)
    first = IterateAverage(0.9, iterates[0])
    for x in iterates[:2]:
        first.update(x)
    saved = {"exp_avg": torch.zeros(1), **first.state()}
    optimizer_state, carried = split_state(saved)
    assert set(optimizer_state) == {"exp_avg"} and set(carried) == set(averaging.KEYS)
    second = IterateAverage(0.9, iterates[0], carried)
    for x in iterates[2:]:
        second.update(x)
    assert torch.equal(second.value(), whole.value())
    expected = sum(0.1 * 0.9 ** (4 - k) * x for k, x in enumerate(iterates)) / (1 - 0.9 ** 5)
    assert torch.allclose(whole.value(), expected, atol=1e-6)
    assert split_state({"step": torch.tensor(3.0)}) == ({"step": torch.tensor(3.0)}, {})  # an older checkpoint


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan")])
def test_a_decay_outside_0_to_1_is_refused_naming_the_flag(value: float) -> None:
    with pytest.raises(ConfigError, match=r"--average-iterates \(optim.average_iterates\) must be >= 0 and < 1"):
        resolve(("test", {"optim": {"average_iterates": value}}))
    with pytest.raises(ValueError):
        IterateAverage(value, torch.zeros(1, 3, 2, 2))


def test_presets_batches_and_the_fingerprint_carry_the_decay_and_older_work_dirs_still_match(tmp_path: Path) -> None:
    preset = tmp_path / "smooth.toml"
    preset.write_text("[optim]\naverage_iterates = 0.9\n")
    assert resolve((str(preset), load_toml(preset))).optim.average_iterates == 0.9
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'output_dir = "out"\n[[job]]\nname = "a"\ncontent = "{CONTENT}"\nstyles = ["{STYLE}"]\n'
                    'overrides = { optim = { average_iterates = 0.95 } }\n')
    assert load_batch(jobs).jobs[0].render.config.optim.average_iterates == 0.95
    off, on = (RenderJob(CONTENT, (STYLE,), tmp_path / "o.png", resolve(("t", {"optim": {"average_iterates": d}})))
               for d in (0.0, 0.9))
    assert "average_iterates" not in fingerprint(off)["settings"]["optim"]  # as before the flag existed
    assert fingerprint(on)["settings"]["optim"]["average_iterates"] == 0.9


def test_the_render_writes_and_hands_on_the_average_and_reports_its_loss(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    iterates: list[Tensor] = []
    update = IterateAverage.update

    def recording(self: IterateAverage, image: Tensor) -> None:
        iterates.append(image.detach().clone())
        update(self, image)

    monkeypatch.setattr(IterateAverage, "update", recording)
    scored: list[tuple[Tensor, dict]] = []  # what each stage's final loss was computed on, and that loss
    real_objective = pyramid.stage_objective

    def scoring(*args):
        objective = real_objective(*args)
        loss = objective.loss
        objective.loss = lambda image: scored.append((image.clone(), loss(image))) or scored[-1][1]
        return objective

    monkeypatch.setattr(pyramid, "stage_objective", scoring)
    events: list = []
    result = render(job(tmp_path, pyramid={"iterations": [3, 2, 1]},
                        optim={"optimizer": "adam", "average_iterates": 0.8},
                        device={"precision": "fp32"}, output={"bit_depth": 16}), events.append)
    assert len(iterates) == 6
    first = torch.load(tmp_path / "work" / "stage-0.pt", weights_only=True)["image"]
    expected = (0.2 * 0.8 ** 2 * iterates[0] + 0.2 * 0.8 * iterates[1] + 0.2 * iterates[2]) / (1 - 0.8 ** 3)
    assert torch.allclose(first, expected, atol=1e-6)
    assert not torch.allclose(first, iterates[2], atol=1e-3)  # the average, not the last iterate
    written = images.load_image(result.output)
    assert np.abs(written - images.to_array(iterates[-1])).max() < 1.5 / 65535  # one iterate: its own average
    # the stage's loss, in the events and the settings JSON, is that of the image it handed on
    assert torch.equal(scored[0][0], first)
    finished = [e.losses for e in events if isinstance(e, StageFinished)]
    assert finished[0] == pytest.approx({k: float(v) for k, v in scored[0][1].items()})
    assert json.loads(result.settings.read_text())["stages"][0]["losses"] == finished[0]


def test_a_resumed_averaged_stage_ends_as_the_uninterrupted_one(tmp_path: Path) -> None:
    settings = {"output": {"save_every": 2}, "pyramid": {"iterations": [3, 6, 1]}, "device": {"precision": "fp32"},
                "optim": {"optimizer": "adam", "average_iterates": 0.7}}
    with pytest.raises(Interrupted, match="stage 2 at iteration 5/6 kept"):  # Ctrl-C saves where it stopped
        render(job(tmp_path, **settings), interrupt_at(1, 5))
    work = tmp_path / "work"
    saved = torch.load(work / "stage-1.partial-5.pt", weights_only=True)
    assert set(averaging.KEYS) <= set(saved)
    average = saved[averaging.SUM] / saved[averaging.WEIGHT]
    assert np.abs(images.load_image(work / "current.png") - images.to_array(average)).max() <= 1 / 255
    assert np.abs(images.load_image(tmp_path / "out.partial.png") - images.to_array(average)).max() <= 1 / 255
    assert not torch.allclose(average, saved["image"], atol=1e-3)  # current.png shows the average, not the iterate
    resumed = render(RenderJob(**{**job(tmp_path, **settings).__dict__, "resume": True}))
    uninterrupted = render(job(tmp_path / "again", **settings))
    # image, Adam's moments and the average's buffers were saved: the same steps and the same average follow
    assert np.abs(images.load_image(resumed.output) - images.load_image(uninterrupted.output)).mean() < 1e-6


@pytest.mark.parametrize("optimizer", ["lbfgs", "sgd"])
def test_a_resume_of_an_optimiser_without_saved_state_continues_the_saved_average(
        optimizer: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # L-BFGS rebuilds its history after a break (test_pyramid), so its render is not resumed exactly;
    # the average still is: the resumed stage goes on from the saved buffers.
    g = torch.Generator().manual_seed(1)
    start, objective = torch.rand(1, 3, 4, 4, generator=g), Quadratic(torch.rand(1, 3, 4, 4, generator=g))
    kept: dict = {}

    def keep(i: int, x: Tensor, state: dict) -> None:
        kept[i] = (x.clone(), {k: v.clone() for k, v in state.items()})

    optimize_with_state(start, objective, optimizer=optimizer, lr=0.02, iterations=4, average=0.6, on_state=keep)
    iterate, state = kept[2]
    # no optimiser state of these: the average's buffers, and (SGD) the best point so far
    assert set(state) == set(averaging.KEYS) | ({"best.image", "best.total"} if optimizer == "sgd" else set())
    seen: list[Tensor] = []
    update = IterateAverage.update
    monkeypatch.setattr(IterateAverage, "update", lambda self, x: seen.append(x.clone()) or update(self, x))
    resumed, _ = optimize_with_state(iterate, objective, optimizer=optimizer, lr=0.02, iterations=4, average=0.6,
                                     warm_state=state, done=2)
    assert len(seen) == 2
    expected = ((0.36 * state[averaging.SUM] + 0.24 * seen[0] + 0.4 * seen[1])
                / (0.36 * state[averaging.WEIGHT] + 0.24 + 0.4))
    assert torch.allclose(resumed, expected, atol=1e-6)


@pytest.fixture(scope="module")
def small_objective() -> Objective:
    torch.manual_seed(0)
    weights = Weights.equal_layers(1.0, 1e3, 0.0, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS,
                                   "gram")  # a module fixture: outside conftest's switch
    extractor = VGGFeatures(load_weights("random"), DEFAULT_CONTENT_LAYERS + DEFAULT_STYLE_LAYERS)
    content, style = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    return Objective(extractor, make_targets(extractor, content, [style], [], weights), weights)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_averaging_adds_no_host_read(small_objective: Objective, optimizer: str) -> None:
    start = torch.full((1, 3, 16, 16), 0.5)
    syncs = {}
    for decay in (0.0, 0.9):
        with HostCounter() as counter:  # 6 iterations, one report (the last)
            result, _ = optimize_with_state(start, small_objective, optimizer=optimizer, lr=0.01 if optimizer != "lbfgs"
                                            else 1.0, iterations=6, sync_every=6, average=decay)
        syncs[decay] = counter.syncs
        assert bool(torch.isfinite(result).all()) and 0 <= float(result.min()) <= float(result.max()) <= 1
    assert syncs[0.9] == syncs[0.0], syncs


def test_a_tiled_averaged_render_equals_the_untiled_one(tmp_path: Path) -> None:
    outputs = []
    for tile in ("off", "48"):  # 64 x 48, then 128 x 96 in 2 x 3 tiles
        settings = {"optim": {"optimizer": "adam", "average_iterates": 0.9}, "tiling": {"tile_size": tile},
                    "device": {"precision": "fp32"}, "pyramid": {"min_size": 64, "iterations": [3, 2]}}
        result = render(job(tmp_path / tile, **settings))
        outputs.append((images.load_image(result.output), result.losses))
    (untiled, untiled_losses), (tiled, tiled_losses) = outputs
    # Tiling is exact to float rounding, which Adam's steps amplify over 5 iterations of the default
    # layers (measured 1.8e-4 relative on the content loss); tests/engine/test_optimize.py's bound on the image.
    assert tiled_losses == pytest.approx(untiled_losses, rel=1e-3)
    assert np.abs(tiled - untiled).mean() < 0.5 / 255


def _averaged_on_ranks(world: ranks.World) -> dict:
    """Every rank: 4 averaged Adam steps over the shared objective, then the same run broken after 2
    and continued from rank 0's saved state alone (as a resume does, through ``same_start``)."""
    from hires_nst.core.bands import BandPlan, plan_bands
    from hires_nst.engine.distributed import BandObjective, same_start
    from hires_nst.runtime.placement import FP32
    from tests.helpers.objectives import ALIGN, HALO, problem

    extractor, weights, targets, image = problem()
    plan = BandPlan(tuple(plan_bands(96, 64, world.size, HALO, ALIGN)), None, HALO, ALIGN)
    objective = BandObjective(world, extractor, targets, weights, plan, 96, 64, FP32)
    kept: dict = {}
    whole, _ = optimize_with_state(image, objective, optimizer="adam", lr=0.02, iterations=4, average=0.8)

    def keep(i: int, x: Tensor, state: dict) -> None:
        kept[i] = (x.clone(), {k: v.clone() for k, v in state.items()})

    optimize_with_state(image, objective, optimizer="adam", lr=0.02, iterations=4, average=0.8, on_state=keep)
    iterate, state = kept[2] if world.main else (torch.zeros_like(image), None)
    iterate, state = same_start(world, iterate, state)
    resumed, _ = optimize_with_state(iterate, objective, optimizer="adam", lr=0.02, iterations=4, average=0.8,
                                     warm_state=state, done=2)
    return {"whole": ranks.all_gather(world, whole), "resumed": ranks.all_gather(world, resumed)}


@pytest.mark.slow
def test_every_rank_ends_with_the_same_average_and_a_resume_on_ranks_is_exact() -> None:
    got = ranks.launch(_averaged_on_ranks, [CPU, CPU], (), ())
    first, second = got["whole"]
    assert torch.equal(first, second)
    assert torch.equal(got["resumed"][0], got["resumed"][1])
    assert float((got["resumed"][0] - first).abs().max()) < 1e-6
