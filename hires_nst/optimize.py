"""One stage of optimisation: an optimiser loop over an objective that writes ``image.grad``."""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import Tensor

from hires_nst.errors import ConfigError, NumericalError
from hires_nst.objective import LossTerms

StepCallback = Callable[[int, dict[str, float], float, Tensor], None]  # iteration, losses, seconds, image


def make_optimizer(name: str, image: Tensor, lr: float) -> torch.optim.Optimizer:
    if name == "lbfgs":
        # One evaluation per step() so progress, checkpoints and Ctrl-C happen every iteration; the
        # curvature history lives in the optimiser state, so this equals one long L-BFGS run.
        # Tolerances -1: never stop early (as neural-style), the user chose the iteration count.
        return torch.optim.LBFGS([image], lr=lr, max_iter=1, history_size=100,
                                 tolerance_grad=-1, tolerance_change=-1)
    if name == "adam":
        return torch.optim.Adam([image], lr=lr, betas=(0.9, 0.99))
    raise ConfigError(f"unknown optimizer {name!r}; use lbfgs or adam")


def optimize(image: Tensor, objective: Callable[[Tensor], LossTerms], *, optimizer: str, lr: float,
             iterations: int, on_step: StepCallback | None = None) -> Tensor:
    """Run ``iterations`` steps from ``image`` and return the result, clamped to [0, 1]."""
    image = image.detach().clone().requires_grad_(True)
    opt = make_optimizer(optimizer, image, lr)
    last: dict[str, LossTerms] = {}

    def closure() -> Tensor:
        last["terms"] = objective(image)
        return last["terms"]["total"]

    for iteration in range(1, iterations + 1):
        start = time.perf_counter()
        opt.step(closure)
        if optimizer != "lbfgs":  # Adam keeps the image in range; clamping would break L-BFGS' history
            with torch.no_grad():
                image.clamp_(0, 1)
        values = {k: float(v) for k, v in last["terms"].items()}
        if not math.isfinite(values["total"]):
            raise NumericalError(f"the loss became {values['total']} at iteration {iteration}; "
                                 "try a lower --lr or --style-weight")
        # A finite loss with a non-finite gradient poisons the image one step before the loss
        # shows it; on the last iteration that returned a NaN image without any error.
        if not bool(torch.isfinite(image).all()):
            raise NumericalError(f"the image became non-finite at iteration {iteration}; "
                                 "try a lower --lr or --style-weight")
        if on_step is not None:
            on_step(iteration, values, time.perf_counter() - start, image)
    return image.detach().clamp(0, 1)
