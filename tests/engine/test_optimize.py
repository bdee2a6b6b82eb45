"""Every optimiser: lowers the loss over a two-stage pyramid at its default lr, tiled == untiled."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from hires_nst.config.settings import DEFAULT_LR, OPTIMIZERS, resolve
from hires_nst.engine.optimize import PIXEL_SCALED, Stepper, Stopped, make_optimizer, optimize_with_state
from hires_nst.engine.render import RenderJob, render
from hires_nst.errors import ConfigError
from hires_nst.events import StageFinished, Step
from hires_nst.io import images


def _write_pair(folder: Path) -> tuple[Path, Path]:
    """A smooth photo-like content and a striped 'painting', 64x48 and 48x64."""
    y, x = np.mgrid[0:48, 0:64] / 64.0
    noise = np.random.default_rng(0).random((48, 64, 3)) * 0.2
    content = np.stack([x, y, (x + y) / 2], axis=2) * 0.8 + noise
    stripes = (np.sin(np.mgrid[0:64, 0:48][1] / 2.0)[..., None] * [0.4, 0.2, -0.3] + 0.5)
    images.save_image(folder / "c.png", np.clip(content, 0, 1).astype(np.float32))
    images.save_image(folder / "s.png", np.clip(stripes, 0, 1).astype(np.float32))
    return folder / "c.png", folder / "s.png"


def _job(tmp_path: Path, name: str, **settings) -> RenderJob:
    content, style = _write_pair(tmp_path)
    layers = {"output": {"work_dir": str(tmp_path / f"work-{name}")}}
    for section, values in settings.items():
        layers.setdefault(section, {}).update(values)
    return RenderJob(content, (style,), tmp_path / f"{name}.png", resolve(("test", layers)))


def test_every_optimizer_has_a_default_lr() -> None:
    assert set(DEFAULT_LR) == set(OPTIMIZERS) == {"lbfgs", "lbfgs-torch", "adam", "sgd", "adagrad", "adadelta",
                                                   "rmsprop", "adamw"}
    for name in OPTIMIZERS:
        config = resolve(("test", {"optim": {"optimizer": name}}))
        assert config.lr == DEFAULT_LR[name] and isinstance(make_optimizer(name, torch.zeros(1, 3, 2, 2,
                                                                           requires_grad=True), config.lr),
                                                            torch.optim.Optimizer)


def test_unknown_optimizer_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="unknown optimizer 'nadam'; use one of lbfgs, adam, adamw, sgd"):
        make_optimizer("nadam", torch.zeros(1, requires_grad=True), 0.1)
    with pytest.raises(ConfigError, match="--optimizer .* must be one of lbfgs, adam, adamw, sgd, adagrad, adadelta"):
        resolve(("test", {"optim": {"optimizer": "nadam"}}))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_lowers_the_loss_at_every_stage_of_a_tiny_render(tmp_path: Path, optimizer: str) -> None:
    events: list = []
    job = _job(tmp_path, optimizer, optim={"optimizer": optimizer},
               pyramid={"min_size": 32, "max_size": 64, "iterations": [8, 4]})
    render(job, events.append)
    for stage in (0, 1):
        steps = [e.losses["total"] for e in events if isinstance(e, Step) and e.stage == stage]
        (finished,) = [e for e in events if isinstance(e, StageFinished) and e.stage == stage]
        # Step losses are those of the image each step started from: steps[0] is the stage's start.
        assert len(steps) == (8, 4)[stage]
        assert finished.losses["total"] < steps[0], (stage, steps, finished.losses)
    assert (tmp_path / f"{optimizer}.png").is_file()


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_takes_the_same_steps_tiled_and_untiled(tmp_path: Path, optimizer: str) -> None:
    """Tiling is exact, so every optimiser sees the same losses and gradients and ends on the same image."""
    shallow = {"content_layers": ["conv2_1"], "style_layers": ["conv1_1", "conv2_1"]}
    results = []
    for tile in ("off", "32"):
        events: list = []
        # fp32: tiled == untiled is exact in fp32; bf16 windows round differently (and `auto` is bf16
        # on CPUs with AMX), which L-BFGS amplifies over a few steps.
        job = _job(tmp_path, f"{optimizer}-{tile}", optim={"optimizer": optimizer}, loss=shallow,
                   pyramid={"min_size": 64, "max_size": 64, "iterations": [3]}, tiling={"tile_size": tile},
                   device={"precision": "fp32"})
        render(job, events.append)
        results.append((images.load_image(job.output), [e.losses["total"] for e in events if isinstance(e, Step)]))
    (untiled, untiled_losses), (tiled, tiled_losses) = results
    assert tiled_losses == pytest.approx(untiled_losses, rel=1e-4)
    assert np.abs(tiled - untiled).mean() < 0.5 / 255


def _constant_gradient(value: float):
    def objective(image: torch.Tensor) -> dict[str, torch.Tensor]:
        image.grad = torch.full_like(image, value)
        total = (image.detach() * value).sum()
        zero = torch.zeros(())
        return {"total": total, "content": total, "style": zero, "tv": zero}
    return objective


def test_sgd_steps_on_the_gradient_times_the_pixel_count() -> None:
    # 4x4 image: 16 pixels. SGD's first momentum step is lr * g; we hand it g * 16 (see PIXEL_SCALED).
    stepper = Stepper(torch.full((1, 3, 4, 4), 0.5), _constant_gradient(0.001), "sgd", 1.0)
    stepper.step()
    torch.testing.assert_close(stepper.image.detach(), torch.full((1, 3, 4, 4), 0.5 - 0.016))
    assert set(PIXEL_SCALED) == {"sgd", "adadelta"}


def test_first_order_optimizers_keep_the_image_in_range() -> None:
    for name in ("sgd", "adagrad", "adadelta", "rmsprop", "adamw", "lbfgs"):
        stepper = Stepper(torch.full((1, 3, 4, 4), 0.01), _constant_gradient(10.0), name, 10.0)
        for _ in range(3):
            stepper.step()
            assert float(stepper.image.detach().min()) >= 0.0, name


def test_adamw_returns_its_moments_for_a_warm_start_like_adam() -> None:
    for name in ("adam", "adamw"):
        _, state = optimize_with_state(torch.rand(1, 3, 4, 4), _constant_gradient(0.1), optimizer=name, lr=0.01,
                                       iterations=2)
        assert {"step", "exp_avg", "exp_avg_sq"} <= set(state), name
    _, state = optimize_with_state(torch.rand(1, 3, 4, 4), _constant_gradient(0.1), optimizer="sgd", lr=0.01,
                                   iterations=2)
    assert state == {}


def _quadratic(target: torch.Tensor):
    """|image - target|^2 with its gradient: every step moves the image and Adam's moments."""
    def objective(image: torch.Tensor) -> dict[str, torch.Tensor]:
        image.grad = 2 * (image.detach() - target)
        total = ((image.detach() - target) ** 2).sum()
        zero = torch.zeros(())
        return {"total": total, "content": total, "style": zero, "tv": zero}
    return objective


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_ctrl_c_in_a_report_stops_with_that_iterations_state_and_going_on_from_it_ends_the_same(
        optimizer: str) -> None:
    start, target = torch.full((1, 3, 4, 4), 0.5), torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    settings = {"optimizer": optimizer, "lr": 0.05, "iterations": 8}

    def stop_at_five(iteration: int, values: dict, seconds: float, image: torch.Tensor) -> None:
        if iteration == 5:
            raise KeyboardInterrupt

    with pytest.raises(Stopped) as stopped:
        optimize_with_state(start, _quadratic(target), on_step=stop_at_five, **settings)
    assert stopped.value.iteration == 5
    saved: list[tuple[torch.Tensor, dict]] = []
    optimize_with_state(start, _quadratic(target), on_state=lambda i, image, state: saved.append((image, state)),
                        **{**settings, "iterations": 5})
    image, state = saved[-1]  # what an uninterrupted run holds after 5 iterations
    torch.testing.assert_close(stopped.value.image, image, rtol=0, atol=0)
    assert stopped.value.state.keys() == state.keys()
    for key, value in state.items():
        torch.testing.assert_close(stopped.value.state[key], value, rtol=0, atol=0)

    resumed, _ = optimize_with_state(stopped.value.image, _quadratic(target), warm_state=stopped.value.state, done=5,
                                     **settings)
    whole, _ = optimize_with_state(start, _quadratic(target), **settings)
    if optimizer == "adam":  # its whole state was kept: the same steps follow
        torch.testing.assert_close(resumed, whole, rtol=0, atol=0)
    else:  # our L-BFGS rebuilds its history after the break (not saved): still at the minimum's side
        assert float(((resumed - target) ** 2).sum()) <= float(((stopped.value.image - target) ** 2).sum())


def test_a_ctrl_c_in_the_middle_of_a_step_is_not_taken_for_a_whole_iteration() -> None:
    calls = 0

    def objective(image: torch.Tensor) -> dict[str, torch.Tensor]:
        nonlocal calls
        calls += 1
        if calls == 3:  # inside the third step: Adam's state is not that of any whole iteration
            raise KeyboardInterrupt
        return _constant_gradient(0.1)(image)

    with pytest.raises(KeyboardInterrupt) as stopped:
        optimize_with_state(torch.rand(1, 3, 4, 4), objective, optimizer="adam", lr=0.01, iterations=5)
    assert not isinstance(stopped.value, Stopped)


def test_sigint_ends_the_loop_after_the_iteration_in_progress_reported_and_saved() -> None:
    calls = 0

    def objective(image: torch.Tensor) -> dict[str, torch.Tensor]:
        nonlocal calls
        calls += 1
        if calls == 6:  # Ctrl-C during the sixth step (Adam evaluates once a step)
            os.kill(os.getpid(), signal.SIGINT)
        return _constant_gradient(0.1)(image)

    reported: list[int] = []
    saved: list[int] = []
    with pytest.raises(Stopped) as stopped:
        optimize_with_state(torch.rand(1, 3, 4, 4), objective, optimizer="adam", lr=0.01, iterations=20,
                            sync_every=4, on_step=lambda i, values, seconds, image: reported.append(i),
                            on_state=lambda i, image, state: saved.append(i), stop_on_signal=True)
    # Reports come every 4 iterations; the one in progress when Ctrl-C came is finished, reported
    # and handed to the saver too, then the loop stops.
    assert (stopped.value.iteration, reported, saved, calls) == (6, [4, 6], [4, 6], 6)
    assert int(stopped.value.state["step"]) == 6
