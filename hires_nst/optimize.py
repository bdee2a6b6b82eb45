"""One stage of optimisation: an optimiser loop over an objective that writes ``image.grad``."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from hires_nst.errors import ConfigError, NumericalError
from hires_nst.objective import LossTerms

StepCallback = Callable[[int, dict[str, float], float, Tensor], None]  # iteration, losses, seconds/it, image
StateCallback = Callable[[int, Tensor, dict[str, Tensor]], None]  # iteration, image, Adam's state (or {})


LBFGS_HISTORY_BYTES = 2 * 2**30  # memory the curvature pairs may take at one stage


def lbfgs_history(pixels: int) -> int:
    """Curvature pairs kept: 100 (as neural-style) while they fit in 2 GiB, fewer at print sizes.

    Each pair is two image-sized fp32 vectors: at 4096x4096, 100 pairs would be 40 GB. The top
    stages run few iterations from a good start, where a short history loses little (SPST keeps
    10 pairs above its first scale; neural-style's multires recipe uses 5 at the top).
    """
    return max(3, min(100, LBFGS_HISTORY_BYTES // (2 * 3 * 4 * pixels)))


# Optimisers whose step does not depend on the gradient's scale (up to a tiny eps): their --lr is a
# step size in pixel values on the [0, 1] image, the same at every pyramid stage.
# SGD and Adadelta are not scale-invariant, and our losses are means over positions, so a pixel's
# gradient shrinks with the pixel count (4x per 2x stage): they see the gradient of the *summed*
# loss instead (gradient x pixels), so that one --lr works at every stage and image size.
SCALE_FREE = ("lbfgs", "adam", "adamw", "adagrad", "rmsprop")
PIXEL_SCALED = ("sgd", "adadelta")
ADAM_LIKE = ("adam", "adamw")  # optimisers whose moments --warm-start may carry across stages


def make_optimizer(name: str, image: Tensor, lr: float) -> torch.optim.Optimizer:
    """The optimiser ``name`` over the one tensor ``image``, with this project's fixed settings."""
    params = [image]
    if name == "lbfgs":
        # One evaluation per step() so progress, checkpoints and Ctrl-C happen every iteration; the
        # curvature history lives in the optimiser state, so this equals one long L-BFGS run.
        # Tolerances -1: never stop early (as neural-style), the user chose the iteration count.
        return torch.optim.LBFGS(params, lr=lr, max_iter=1, history_size=lbfgs_history(image[0, 0].numel()),
                                 tolerance_grad=-1, tolerance_change=-1)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(0.9, 0.99))
    if name == "adamw":  # Adam's betas, so that a comparison isolates torch's default decoupled weight decay
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    if name == "adadelta":
        return torch.optim.Adadelta(params, lr=lr)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr)
    known = ", ".join(("lbfgs", "adam", "adamw", "sgd", "adagrad", "adadelta", "rmsprop"))
    raise ConfigError(f"unknown optimizer {name!r}; use one of {known}")


def resize_adam_state(state: dict[str, Tensor], height: int, width: int) -> dict[str, Tensor]:
    """Carry Adam's moments to the next stage's size (as crowsonkb's renderer does).

    Without them Adam restarts with tiny bias-corrected steps that are pure noise for a few
    dozen iterations; resized moments continue the previous stage's per-pixel step sizes.
    The second moment is interpolated bilinearly and clamped at 0 (bicubic could go negative).
    Our losses are means over positions, so each pixel's gradient shrinks with the pixel count:
    the moments are rescaled by that ratio (squared for the second), else the carried second
    moment would be ~16x too large after a 2x stage and Adam would crawl.
    """
    size = (height, width)
    ratio = state["exp_avg"][0, 0].numel() / (height * width)
    avg = F.interpolate(state["exp_avg"], size=size, mode="bicubic", align_corners=False) * ratio
    avg_sq = F.interpolate(state["exp_avg_sq"], size=size, mode="bilinear", align_corners=False).clamp_min(0)
    return {"step": state["step"].clone(), "exp_avg": avg, "exp_avg_sq": avg_sq * ratio**2}


def optimize(image: Tensor, objective: Callable[[Tensor], LossTerms], *, optimizer: str, lr: float,
             iterations: int, on_step: StepCallback | None = None, sync_every: int = 1) -> Tensor:
    """Run ``iterations`` steps from ``image`` and return the result, clamped to [0, 1]."""
    return optimize_with_state(image, objective, optimizer=optimizer, lr=lr, iterations=iterations,
                               on_step=on_step, sync_every=sync_every)[0]


def _check_finite(values: dict[str, float], image: Tensor, where: str) -> None:
    if not math.isfinite(values["total"]):
        raise NumericalError(f"the loss became {values['total']} {where}; "
                             "try a lower --lr or --style-weight")
    # A finite loss with a non-finite gradient poisons the image one step before the loss
    # shows it; on the last iteration that returned a NaN image without any error.
    if not bool(torch.isfinite(image).all()):
        raise NumericalError(f"the image became non-finite {where}; "
                             "try a lower --lr or --style-weight")


def optimize_with_state(image: Tensor, objective: Callable[[Tensor], LossTerms], *, optimizer: str, lr: float,
                        iterations: int, on_step: StepCallback | None = None,
                        warm_state: dict[str, Tensor] | None = None, sync_every: int = 1,
                        done: int = 0, on_state: StateCallback | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``optimize`` that also returns Adam's (or AdamW's) final state and may start from a previous one.

    ``warm_state`` (Adam, AdamW) must already have the image's size (see ``resize_adam_state``).
    Other optimisers return an empty state: L-BFGS' history belongs to one image size, and the
    others restart at each stage. ``done`` iterations of ``iterations`` already ran (a stage
    resumed from its saved progress): the loop runs the rest and numbers them on from ``done``.
    ``on_state`` follows each ``on_step`` with the image and Adam's live state, for checkpoints.

    Losses are read back, checked for inf/NaN and reported every ``sync_every`` iterations and at
    the last: each read waits for the device, so on a GPU the loop otherwise runs ahead of it.
    (Adam gains from this; torch's L-BFGS reads the loss itself at every step.)
    """
    image = image.detach().clone().requires_grad_(True)
    opt = make_optimizer(optimizer, image, lr)
    if warm_state and optimizer in ADAM_LIKE:
        opt.state[image] = {k: v.to(image.device).clone() for k, v in warm_state.items()}
    last: dict[str, LossTerms] = {}
    closure = _closure(image, objective, optimizer, last)
    sync_every = max(1, sync_every)
    start, reported = time.perf_counter(), done
    for iteration in range(done + 1, iterations + 1):
        opt.step(closure)
        if optimizer != "lbfgs":  # first-order steps stay in range; L-BFGS' next closure projects its step
            with torch.no_grad():
                image.clamp_(0, 1)
        if iteration % sync_every and iteration != iterations:
            continue
        values = _read_back(last["terms"], image, f"{'at' if sync_every == 1 else 'by'} iteration {iteration}")
        if on_step is not None:
            on_step(iteration, values, (time.perf_counter() - start) / (iteration - reported), image)
        if on_state is not None:
            on_state(iteration, image.detach(), _live_state(opt, image, optimizer))
        start, reported = time.perf_counter(), iteration
    state = _live_state(opt, image, optimizer) if iterations > done else {}
    return image.detach().clamp(0, 1), state


def _closure(image: Tensor, objective: Callable[[Tensor], LossTerms], optimizer: str,
             last: dict[str, LossTerms]) -> Callable[[], Tensor]:
    """The evaluation the optimiser calls: loss terms into ``last``, the gradient into ``image.grad``."""
    grad_scale = float(image[0, 0].numel()) if optimizer in PIXEL_SCALED else 1.0

    def closure() -> Tensor:
        if optimizer == "lbfgs":
            # Evaluate the image as it will be written: project L-BFGS' step onto [0, 1] first (as
            # the PyTorch tutorial does). Unbounded, it parks a few % of the pixels out of range,
            # and the final clamp then costs a fifth of the style it reached (benchmarks/lbfgs_range.py).
            with torch.no_grad():
                image.clamp_(0, 1)
        last["terms"] = objective(image)
        if grad_scale != 1.0 and image.grad is not None:
            image.grad.mul_(grad_scale)
        return last["terms"]["total"]

    return closure


def _read_back(terms: LossTerms, image: Tensor, where: str) -> dict[str, float]:
    """All the terms in one read (one wait for the device, not four), checked for inf/NaN."""
    values = dict(zip(terms, torch.stack([v.detach().float() for v in terms.values()]).tolist()))
    _check_finite(values, image, where)
    return values


def _live_state(opt: torch.optim.Optimizer, image: Tensor, optimizer: str) -> dict[str, Tensor]:
    """Adam's (AdamW's) moments and step count; nothing for the others (see optimize_with_state)."""
    return {k: v.detach() for k, v in opt.state[image].items()} if optimizer in ADAM_LIKE else {}
