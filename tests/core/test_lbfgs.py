"""The device L-BFGS: torch's steps without torch's host reads."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import pytest
import torch

from hires_nst.config.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
from hires_nst.config.settings import resolve
from hires_nst.core.lbfgs import DeviceLBFGS
from hires_nst.engine.objective import Objective, Weights, make_targets
from hires_nst.engine.optimize import optimize_with_state
from hires_nst.engine.render import RenderJob, render
from hires_nst.model.features import VGGFeatures
from hires_nst.model.weights import load_weights
from hires_nst.runtime.hostsync import HostCounter
from tests.helpers.paths import EXAMPLES

LAYERS = [*DEFAULT_CONTENT_LAYERS, *DEFAULT_STYLE_LAYERS]


def _run(make, steps: int, x0: torch.Tensor, loss_fn) -> torch.Tensor:
    x = x0.clone().requires_grad_(True)
    opt = make([x])

    def closure() -> torch.Tensor:
        x.grad = None
        loss = loss_fn(x)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return x.detach()


@pytest.mark.parametrize("history", [3, 100])
def test_same_iterates_as_torch_lbfgs_on_a_smooth_problem(history: int) -> None:
    generator = torch.Generator().manual_seed(0)
    n = 40
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    a = a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, generator=generator, dtype=torch.float64)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x @ a @ x - b @ x + 0.1 * x.pow(4).sum()

    x0 = torch.zeros(n, dtype=torch.float64)
    ours = _run(lambda p: DeviceLBFGS(p, lr=1.0, history_size=history), 30, x0, loss_fn)
    theirs = _run(lambda p: torch.optim.LBFGS(p, lr=1.0, max_iter=1, history_size=history,
                                              tolerance_grad=-1, tolerance_change=-1), 30, x0, loss_fn)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)  # measured 3.5e-7 (3 pairs), 2e-16 (100)


@pytest.fixture(scope="module")
def objective() -> Objective:
    torch.manual_seed(0)
    weights = Weights.equal_layers(1.0, 1e3, 0.0, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS,
                                   "gram")  # a module fixture: outside conftest's switch
    extractor = VGGFeatures(load_weights("random"), LAYERS)
    content, style = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)  # the smallest conv5_1 takes
    return Objective(extractor, make_targets(extractor, content, [style], [], weights), weights)


def test_host_syncs_per_iteration_device_lbfgs_against_torch_lbfgs(objective: Objective) -> None:
    # Counted over iterations 51..70 (torch's history is ~50 pairs by then), reported every 10th
    # as with --sync-every 10: the counter is on from the report at 50 to the report at 70.
    start = torch.full((1, 3, 16, 16), 0.5)
    per_iteration = {}
    for name in ("lbfgs", "lbfgs-torch"):
        counter = HostCounter()

        def on_step(iteration: int, values: dict, seconds: float, image: torch.Tensor,
                    counter: HostCounter = counter) -> None:
            if iteration == 50:
                counter.__enter__()
            elif iteration == 70:
                counter.__exit__(None, None, None)

        optimize_with_state(start, objective, optimizer=name, lr=1.0, iterations=70, sync_every=10, on_step=on_step)
        per_iteration[name] = counter.syncs / 20
    assert per_iteration["lbfgs"] <= 0.1, per_iteration  # the one read per report: 2 in 20 iterations
    assert per_iteration["lbfgs-torch"] > 100, per_iteration  # measured ~123 (2 x history + ~5 per step)


def test_a_64_px_render_ends_within_1_percent_of_torch_lbfgs(tmp_path: Path) -> None:
    totals = {}
    for name in ("lbfgs", "lbfgs-torch"):
        config = resolve(("test", {"pyramid": {"min_size": 64, "max_size": 64, "iterations": [30]},
                                   "optim": {"optimizer": name}, "device": {"precision": "fp32"},
                                   "output": {"work_dir": str(tmp_path / f"work-{name}")}}))
        job = RenderJob(EXAMPLES / "tubingen.jpg", (EXAMPLES / "starry_night.jpg",), tmp_path / f"{name}.png", config)
        totals[name] = render(job).losses["total"]
    # measured at 50 iterations: 1.0952 against 1.0963 (0.09%)
    assert totals["lbfgs"] == pytest.approx(totals["lbfgs-torch"], rel=0.01), totals


def _rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return ((1 - x[:-1]) ** 2).sum() + 100 * ((x[1:] - x[:-1] ** 2) ** 2).sum()


def test_on_rosenbrock_the_accepted_loss_never_rises_where_unguarded_lbfgs_climbs() -> None:
    x = torch.tensor([-1.2, 1.0] * 5, dtype=torch.float64, requires_grad=True)
    opt = DeviceLBFGS([x], lr=1.0, history_size=10)
    accepted, evaluated = [], []

    def closure() -> torch.Tensor:
        x.grad = None
        loss = _rosenbrock(x)
        loss.backward()
        return loss

    for _ in range(300):
        evaluated.append(float(opt.step(closure).detach()))
        accepted.append(float(opt.state[x]["loss"]))
    assert all(b <= a for a, b in pairwise(accepted))
    assert accepted[-1] < 1e-8 and float(_rosenbrock(opt.accepted_image())) == accepted[-1]
    assert sum(b > a for a, b in pairwise(evaluated)) > 0  # it did try steps that went up: rejected
    theirs = torch.tensor([-1.2, 1.0] * 5, dtype=torch.float64, requires_grad=True)
    torch_opt = torch.optim.LBFGS([theirs], lr=1.0, max_iter=1, history_size=10, tolerance_grad=-1, tolerance_change=-1)
    losses = []

    def their_closure() -> torch.Tensor:
        loss = _rosenbrock(theirs)
        loss.backward()
        return loss

    for _ in range(300):
        theirs.grad = None
        losses.append(float(torch_opt.step(their_closure).detach()))
    assert sum(b > a for a, b in pairwise(losses)) > 20  # measured 41 of 300 steps uphill, no line search


def test_candidates_stay_in_bounds_and_pairs_use_the_projected_step() -> None:
    # The minimum (at 2) lies outside [0, 1]: unprojected, the step would overshoot the bound.
    x = torch.full((6,), 0.5, dtype=torch.float64, requires_grad=True)
    opt = DeviceLBFGS([x], lr=1.0, history_size=5, bounds=(0.0, 1.0))

    def closure() -> torch.Tensor:
        x.grad = None
        loss = ((x - 2.0) ** 2).sum()
        loss.backward()
        return loss

    before = x.detach().clone()
    opt.step(closure)  # the first point is accepted; the first candidate is proposed
    assert float(x.detach().min()) >= 0.0 and float(x.detach().max()) <= 1.0
    candidate = x.detach().clone()
    opt.step(closure)  # the candidate is evaluated, accepted, and its pair stored
    assert bool(opt.state[x]["accepted"])
    torch.testing.assert_close(opt.state[x]["S"][0], candidate - before)  # the move made, not the one proposed
    for _ in range(5):
        opt.step(closure)
        assert float(x.detach().min()) >= 0.0 and float(x.detach().max()) <= 1.0
    torch.testing.assert_close(opt.accepted_image(), torch.ones(6, dtype=torch.float64))  # the bound is the optimum


def test_a_rejected_candidate_leaves_the_accepted_point_and_shrinks_the_step() -> None:
    # A loss that punishes the first candidate: the quadratic model overshoots into a wall.
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = DeviceLBFGS([x], lr=1.0, history_size=5)

    def closure() -> torch.Tensor:
        x.grad = None
        loss = -x.sum() + 1e3 * torch.relu(x - 0.1).pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)  # accepts x = 0 (loss 0), proposes 0.25 along -g (1 / |g|_1 = 1/4)
    first = x.detach().clone()
    opt.step(closure)  # 0.25 costs 1e3 * 0.15^2 * 4 - 1 = 89: rejected
    assert not bool(opt.state[x]["accepted"])
    torch.testing.assert_close(opt.accepted_image(), torch.zeros(4, dtype=torch.float64))
    assert float(x.detach().abs().max()) < float(first.abs().max())  # the next candidate is closer
    assert float(opt.state[x]["scale"]) == pytest.approx(0.25 * 0.1, rel=1e-6)  # the quadratic fit, at its floor


def test_convergence_stops_only_after_a_flat_window() -> None:
    from hires_nst.engine.optimize import Convergence

    stop = Convergence(tolerance=0.01, patience=20)
    totals = {10: 1.0, 20: 0.9, 30: 0.8, 40: 0.795, 50: 0.794, 60: 0.793}
    decisions = {i: stop.converged(i, t) for i, t in totals.items()}
    # 20 back from 40 is 20 (0.9 -> 0.795: 12% better), from 50 is 30 (0.8 -> 0.794: 0.75%, < 1%)
    assert decisions == {10: False, 20: False, 30: False, 40: False, 50: True, 60: True}
    assert not Convergence(tolerance=0.0).converged(1000, 1.0)  # 0: never


class _Bowl:
    """1/2 |x - t|^2 over an image: the loss the tests below can predict."""

    def __init__(self, target: torch.Tensor) -> None:
        self.target = target

    def __call__(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = 0.5 * ((image - self.target) ** 2).sum()
        loss.backward()
        zero = torch.zeros(())
        return {"total": loss.detach(), "content": loss.detach(), "style": zero, "tv": zero}


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "lbfgs"])
def test_the_result_is_the_best_point_evaluated_and_reports_never_rise(optimizer: str) -> None:
    # lr far too large: Adam and SGD overshoot the bowl's bottom and oscillate (their losses rise);
    # the result is still the lowest-loss point any step evaluated, and the reports follow it.
    g = torch.Generator().manual_seed(0)
    start, target = torch.rand(1, 3, 8, 8, generator=g), torch.rand(1, 3, 8, 8, generator=g)
    objective = _Bowl(target)
    reported: list[float] = []
    result, _ = optimize_with_state(start, objective, optimizer=optimizer, lr=0.5 if optimizer != "lbfgs" else 4.0,
                                    iterations=30, on_step=lambda i, v, s, image: reported.append(v["total"]))
    assert all(b <= a for a, b in pairwise(reported))
    assert float(objective(result.clone().requires_grad_(True))["total"]) == pytest.approx(reported[-1], rel=1e-6)
