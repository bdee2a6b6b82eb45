"""--style-loss w2: the Wasserstein-2 distance between Gaussian fits of the features (issue 17)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hires_nst.config.settings import resolve
from hires_nst.core import losses
from hires_nst.core.bands import BandPlan, plan_bands
from hires_nst.core.tiles import align_for, required_halo
from hires_nst.engine.distributed import BandObjective
from hires_nst.engine.objective import Objective, Statistics, Weights, make_targets, style_loss
from hires_nst.engine.optimize import optimize_with_state
from hires_nst.engine.plan import loss_weights
from hires_nst.engine.tiling import TiledObjective, make_objective
from hires_nst.errors import ConfigError
from hires_nst.model.features import VGGFeatures
from hires_nst.model.weights import load_weights
from hires_nst.runtime import ranks
from hires_nst.runtime.hostsync import HostCounter
from hires_nst.runtime.placement import FP32
from tests.helpers.objectives import setup_objective
from tests.helpers.synthetic import tiles_for

CONTENT_LAYERS = ("conv3_1",)
STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1")
HALO, ALIGN = required_halo(CONTENT_LAYERS + STYLE_LAYERS), align_for(CONTENT_LAYERS + STYLE_LAYERS)


def moments(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (C,) and E[f f^T] (C, C) of (C, N) features."""
    return features.mean(1), features @ features.T / features.shape[1]


def test_w2_is_zero_for_identical_statistics_and_positive_otherwise() -> None:
    g = torch.Generator().manual_seed(0)
    features = torch.rand(64, 300, generator=g) * 5  # ReLU-like: non-negative, non-zero mean
    target = losses.w2_target(*moments(features))
    same = losses.w2_distance(*moments(features), target)
    assert abs(float(same)) < 1e-5 * float(target.norm)
    other = losses.w2_distance(*moments(features * 1.5 + 0.3), target)
    assert float(other) > 0.05 * float(target.norm)


def test_w2_of_gaussians_with_commuting_covariances_matches_the_closed_form() -> None:
    # Diagonal covariances: W2^2 = |m1 - m2|^2 + sum (s1 - s2)^2 over the standard deviations.
    mean_a, mean_b = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 1.0, 0.5])
    sd_a, sd_b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 0.5, 3.0])
    second = lambda mean, sd: torch.diag(sd**2) + torch.outer(mean, mean)  # noqa: E731
    target = losses.w2_target(mean_b, second(mean_b, sd_b))
    # The ridge adds the same small variance to both sides: fold it into the closed form.
    ridge = float(target.ridge)
    expected = (mean_a - mean_b).square().sum() + ((sd_a**2 + ridge).sqrt() - (sd_b**2 + ridge).sqrt()).square().sum()
    got = losses.w2_distance(mean_a, second(mean_a, sd_a), target)
    assert float(got) == pytest.approx(float(expected), rel=1e-5)


@pytest.fixture(params=losses.SQRT_METHODS)
def sqrt_method(request: pytest.FixtureRequest):
    """Each square-root method on this CPU: Newton-Schulz is the CUDA path."""
    with losses.forced_sqrt_method(request.param):
        yield request.param


def test_the_square_root_method_follows_the_device() -> None:
    assert losses.sqrt_method(torch.device("cpu")) == "eigh"  # LAPACK: ~10x faster here, no host read to avoid
    assert losses.sqrt_method(torch.device("cuda", 0)) == "newton-schulz"  # cuSOLVER's eigh waits for the device
    with losses.forced_sqrt_method("newton-schulz"):
        assert losses.sqrt_method(torch.device("cpu")) == "newton-schulz"
    with pytest.raises(ValueError, match="square-root method"):
        with losses.forced_sqrt_method("svd"):
            pass


def test_trace_sqrt_gradient_checks_in_float64_on_both_methods(sqrt_method: str) -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64)
    generic = (a @ a.T + 0.1 * torch.eye(6, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(losses.trace_sqrt, (generic,))
    between = losses.matrix_sqrt(generic.detach() + torch.eye(6, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda m: losses.trace_sqrt(m, between=between), (generic,))
    # Autograd through eigh divides by eigenvalue gaps: a scaled identity would give inf/nan.
    repeated = (2.0 * torch.eye(6, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(losses.trace_sqrt, (repeated,))
    (grad,) = torch.autograd.grad(losses.trace_sqrt(repeated), repeated)
    torch.testing.assert_close(grad, torch.eye(6, dtype=torch.float64) * 0.5 / 2.0**0.5, rtol=1e-12, atol=0)


def test_newton_schulz_equals_eigh_at_the_conditioning_the_ridge_allows() -> None:
    # Eigenvalues from 1 down to 1e-11 of the largest: the worst case the w2 ridge allows at
    # C = 512 (losses.NS_FLOOR), here at C = 64; batched, with a leading dimension.
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(2, 64, 64, generator=g, dtype=torch.float64))
    values = torch.logspace(0, -11, 64, dtype=torch.float64)
    matrix = (q * values) @ q.mT
    root, inv_root = losses.newton_schulz(matrix)
    exact = (q * values.sqrt()) @ q.mT
    assert float((root - exact).norm() / exact.norm()) < 1e-10
    # The inverse root reaches 1 / sqrt(1e-11): float64 rounding of the matrix, amplified, leaves
    # 4.4e-7 relative (the same from 19 to 25 iterations).
    exact_inv = (q / values.sqrt()) @ q.mT
    assert float((inv_root - exact_inv).norm() / exact_inv.norm()) < 1e-6
    with losses.forced_sqrt_method("newton-schulz"):
        assert torch.allclose(losses.trace_sqrt(matrix), values.sqrt().sum().expand(2), rtol=1e-11)
        assert torch.allclose(losses.matrix_sqrt(matrix), exact, rtol=0, atol=1e-11)


def test_float32_newton_schulz_diverges_where_float64_converges() -> None:
    # Why W2_DTYPE is float64 on the Newton-Schulz path too (docs/experiments.md, "w2 square root").
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=torch.float64))
    matrix = (q * torch.logspace(0, -9, 64, dtype=torch.float64)) @ q.T
    assert not bool(torch.isfinite(losses.newton_schulz(matrix.float(), iterations=40)[0]).all())
    assert bool(torch.isfinite(losses.newton_schulz(matrix, iterations=40)[0]).all())


def test_w2_gradient_with_respect_to_the_features_checks_in_float64() -> None:
    g = torch.Generator().manual_seed(2)
    target = losses.w2_target(*moments(torch.rand(8, 40, generator=g, dtype=torch.float64)))
    # 12 positions for 8 channels: a nearly singular covariance, which the ridge keeps finite.
    features = torch.rand(8, 12, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: losses.w2_distance(*moments(f), target), (features,))


def test_w2_gradient_checks_in_float64_on_the_newton_schulz_path() -> None:
    g = torch.Generator().manual_seed(2)
    with losses.forced_sqrt_method("newton-schulz"):
        target = losses.w2_target(*moments(torch.rand(8, 40, generator=g, dtype=torch.float64)))
        features = torch.rand(8, 12, generator=g, dtype=torch.float64).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda f: losses.w2_distance(*moments(f), target), (features,))


def test_w2_batches_over_leading_dimensions() -> None:
    g = torch.Generator().manual_seed(3)
    feats = [torch.rand(16, 50, generator=g) for _ in range(4)]
    one_by_one = [losses.w2_distance(*moments(feats[i + 2]), losses.w2_target(*moments(feats[i]))) for i in range(2)]
    stacked = [torch.stack(x) for x in zip(*(moments(f) for f in feats[:2]), strict=True)]
    target = losses.w2_target(*stacked)
    got = losses.w2_distance(*[torch.stack(x) for x in zip(*(moments(f) for f in feats[2:]), strict=True)], target)
    assert torch.allclose(got, torch.stack(one_by_one), rtol=1e-5)


# --------------------------------------------------------------------------- in the objective


def setup(width: int = 96, height: int = 64):
    return setup_objective("max", width, height, CONTENT_LAYERS, STYLE_LAYERS, tv=0.0, style_loss="w2")


def test_the_style_images_own_statistics_score_zero() -> None:
    weights = dataclasses.replace(Weights.equal_layers(0.0, 1.0, 0.0, (), STYLE_LAYERS), style_loss="w2")
    extractor = VGGFeatures(load_weights("original"), STYLE_LAYERS)
    style = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(5))
    targets = make_targets(extractor, None, [style], [], weights)
    assert set(targets.w2) == set(STYLE_LAYERS)
    assert float(Objective(extractor, targets, weights).loss(style)["style"]) < 1e-4
    assert float(Objective(extractor, targets, weights).loss(torch.rand_like(style))["style"]) > 1e-2


@pytest.mark.slow
def test_tiled_w2_loss_and_gradient_equal_the_untiled_ones() -> None:
    width, height = 160, 128
    extractor, targets, weights, image = setup(width, height)
    objective = make_objective(extractor, targets, weights, tiles_for(extractor, width, height, 64))
    assert isinstance(objective, TiledObjective) and len(objective.tiles) > 1
    tiled_image, untiled_image = image.clone(), image.clone()
    untiled = Objective(extractor, targets, weights)(untiled_image)
    tiled = objective(tiled_image)
    for key in ("total", "content", "style"):
        assert float(tiled[key]) == pytest.approx(float(untiled[key]), rel=1e-5), key
    assert float((tiled_image.grad - untiled_image.grad).norm() / untiled_image.grad.norm()) < 1e-4


def test_style_loss_reads_only_the_statistics_it_is_given() -> None:
    # w2 without feature sums is a programming error, not a silent Gram loss.
    extractor, targets, weights, image = setup()
    stats = Statistics({n: targets.style[n] * 10 for n in STYLE_LAYERS}, {n: 10 for n in STYLE_LAYERS}, {})
    with pytest.raises(KeyError):
        style_loss(stats, targets, weights, torch.zeros(()))


def evaluate_on_ranks(world: ranks.World) -> dict:
    extractor, targets, weights, image = setup()
    out = {}
    for name, tile in (("one window", None), ("tiled", 16)):
        plan = BandPlan(tuple(plan_bands(96, 64, world.size, HALO, ALIGN)), tile, HALO, ALIGN)
        leaf = image.clone()
        terms = BandObjective(world, extractor, targets, weights, plan, 96, 64, FP32)(leaf)
        out[name] = ({k: float(v) for k, v in terms.items()}, leaf.grad)
    return out


@pytest.mark.slow
def test_two_ranks_give_the_single_process_w2_loss_and_gradient() -> None:
    extractor, targets, weights, image = setup()
    single = image.clone()
    expected = Objective(extractor, targets, weights)(single)
    got = ranks.launch(evaluate_on_ranks, [torch.device("cpu")] * 2, (), ())
    for name, (terms, grad) in got.items():
        assert terms["style"] == pytest.approx(float(expected["style"]), rel=1e-5), name
        assert float((grad - single.grad).norm() / single.grad.norm()) < 1e-5, name


def test_the_newton_schulz_path_gives_the_eigh_paths_loss_and_gradient() -> None:
    # The CUDA code path (targets' roots and the per-evaluation square roots by matmuls), on this CPU.
    out = {}
    for method in losses.SQRT_METHODS:
        with losses.forced_sqrt_method(method):
            extractor, targets, weights, image = setup()
            leaf = image.clone()
            out[method] = Objective(extractor, targets, weights)(leaf), leaf.grad
    (eigh, eigh_grad), (newton, newton_grad) = out["eigh"], out["newton-schulz"]
    assert float(newton["style"]) == pytest.approx(float(eigh["style"]), rel=1e-6)
    assert float((newton_grad - eigh_grad).norm() / eigh_grad.norm()) < 1e-5


def square_roots_per_evaluation(objective, image: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """(square roots taken, host syncs on CUDA) in one evaluation with gradient."""
    calls = []
    real = losses.trace_sqrt
    monkeypatch.setattr(losses, "trace_sqrt", lambda *a, **k: calls.append(1) or real(*a, **k))
    with HostCounter(simulate_cuda=True) as counter:
        objective(image.clone())
    monkeypatch.setattr(losses, "trace_sqrt", real)
    return len(calls), counter.syncs


@pytest.mark.parametrize("method", losses.SQRT_METHODS)
def test_every_objective_takes_one_square_root_per_style_layer(method: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiled and banded objectives took the value from loss_terms and the factors from a second
    # evaluation of the style term (issue 25): two eighs per layer, two host syncs each on CUDA.
    with losses.forced_sqrt_method(method):
        extractor, targets, weights, image = setup()
        plan = BandPlan(tuple(plan_bands(96, 64, 1, HALO, ALIGN)), 16, HALO, ALIGN)
        objectives = {"untiled": Objective(extractor, targets, weights),
                      "tiled": make_objective(extractor, targets, weights, tiles_for(extractor, 96, 64, 32)),
                      "banded": BandObjective(ranks.single(torch.device("cpu")), extractor, targets, weights, plan,
                                              96, 64, FP32)}
        assert len(objectives["tiled"].tiles) > 1 and not objectives["banded"].one_window
        for name, objective in objectives.items():
            roots, syncs = square_roots_per_evaluation(objective, image, monkeypatch)
            assert roots == len(STYLE_LAYERS), name
            assert syncs == (len(STYLE_LAYERS) if method == "eigh" else 0), name


def default_problem(pair, width: int, height: int, tile: int | None):
    """The default settings (w2, descending layer weights, L-BFGS) on the bundled pair at a small
    size: objective (tiled with ``tile``), start image, learning rate."""
    from hires_nst.io import images

    config = resolve()
    weights = loss_weights(config)
    assert weights.style_loss == "w2" and config.optim.optimizer == "lbfgs"
    extractor = VGGFeatures(load_weights("original"), (*weights.content_layers, *weights.style_layers))
    content, style = (images.to_tensor(images.resize(images.load_image(p), width, height)) for p in pair)
    targets = make_targets(extractor, content, [style], [], weights)
    return make_objective(extractor, targets, weights, tiles_for(extractor, width, height, tile)), content, config.lr


def syncs_per_iteration(objective, start: torch.Tensor, lr: float) -> float:
    """Host syncs per iteration of the default optimiser, CUDA's hidden ones included, from the
    report at iteration 10 to the one at 20 (--sync-every 10, as on CUDA): one read is 0.1."""
    counter = HostCounter(simulate_cuda=True)

    def on_step(iteration: int, values: dict, seconds: float, image: torch.Tensor) -> None:
        if iteration == 10:
            counter.__enter__()
        elif iteration == 20:
            counter.__exit__(None, None, None)

    optimize_with_state(start, objective, optimizer="lbfgs", lr=lr, iterations=20, sync_every=10, on_step=on_step)
    return counter.syncs / 10


@pytest.fixture
def one_thread():
    """One thread: with two, an evaluation on these shared 2-core machines measured 8x slower
    (OpenMP threads waiting for busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.default_loss
@pytest.mark.slow
@pytest.mark.parametrize("tile", [None, 32], ids=["untiled", "tiled"])
def test_the_default_loss_on_the_cuda_path_reads_the_host_only_at_reports(pair, tile: int | None, one_thread,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 25 measured 5.1 host syncs per iteration untiled and 10.25 tiled (a CUDA eigh per
    # style layer, twice when tiled) against 0.1 for the Gram loss. The eigh path still counts
    # them, so the counter can fail. Newton-Schulz runs 3 steps here, not 20: 59 float64 matmuls
    # of 512 x 512 per layer take ~0.5 s on these CPUs, and the count changes how many matmuls
    # are queued, not what the host waits for (no branch on the data; the accuracy of the 20
    # steps is pinned above and in docs/experiments.md).
    monkeypatch.setattr(losses, "NS_ITERATIONS", 3)
    per_iteration = {}
    for method in ("newton-schulz", "eigh"):
        with losses.forced_sqrt_method(method):
            objective, start, lr = default_problem(pair, 64, 32, tile)
            assert isinstance(objective, TiledObjective) == (tile is not None)
            per_iteration[method] = syncs_per_iteration(objective, start, lr)
    assert per_iteration["newton-schulz"] <= 0.1, per_iteration
    assert per_iteration["eigh"] >= 5, per_iteration


@pytest.mark.default_loss
def test_the_config_names_the_style_loss() -> None:
    assert loss_weights(resolve(("t", {"loss": {"style_loss": "w2"}}))).style_loss == "w2"
    assert loss_weights(resolve()).style_loss == "w2"  # the default
    from hires_nst.config.presets import load_preset

    assert loss_weights(load_preset("gatys").config()).style_loss == "gram"
    with pytest.raises(ConfigError, match="--style-loss"):
        resolve(("t", {"loss": {"style_loss": "sliced"}}))


@pytest.mark.default_loss
@pytest.mark.slow
def test_a_default_two_stage_render_runs_the_w2_loss_and_keeps_the_photo(tmp_path, pair) -> None:
    from hires_nst.engine.render import RenderJob, render
    from hires_nst.io import images

    content, style = pair
    config = resolve(("test", {"pyramid": {"max_size": 96, "min_size": 64, "scale_factor": 1.5, "iterations": [15, 8]},
                               "device": {"device": "cpu", "precision": "fp32"},
                               "output": {"work_dir": str(tmp_path / "work")}}))
    assert config.loss.style_loss == "w2" and config.loss.style_layer_weights == "halving"
    result = render(RenderJob(content, (style,), tmp_path / "out.png", config))
    out = images.load_image(result.output)
    photo = images.resize(images.load_image(content), out.shape[1], out.shape[0])
    assert 0 < result.losses["style"] and result.losses["content"] < 0.6
    assert 0.02 < float(abs(out - photo).mean()) < 0.25  # painted, not replaced
