"""One stage of optimisation: an optimiser loop over an objective that writes ``image.grad``.

Over 300 lines on purpose: every optimiser's step loop, the best point and convergence share the Stepper.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from hires_nst.config.catalog import OPTIMIZERS
from hires_nst.core.averaging import SUM, WEIGHT, IterateAverage, split_state
from hires_nst.core.lbfgs import DeviceLBFGS
from hires_nst.core.memmodel import lbfgs_history
from hires_nst.engine.objective import LossTerms
from hires_nst.errors import ConfigError, NumericalError
from hires_nst.io.safety import stop_requests

StepCallback = Callable[[int, dict[str, float], float, Tensor], None]  # iteration, losses, seconds/it, image
# iteration, image (the iterate), Adam's state (or {}) and the average's buffers (averaging.KEYS)
StateCallback = Callable[[int, Tensor, dict[str, Tensor]], None]


# The other optimisers' steps do not depend on the gradient's scale (up to a tiny eps): their --lr
# is a step size in pixel values on the [0, 1] image, the same at every pyramid stage.
# SGD and Adadelta are not scale-invariant, and our losses are means over positions, so a pixel's
# gradient shrinks with the pixel count (4x per 2x stage): they see the gradient of the *summed*
# loss instead (gradient x pixels), so that one --lr works at every stage and image size.
PIXEL_SCALED = ("sgd", "adadelta")
ADAM_LIKE = ("adam", "adamw")  # optimisers whose moments --warm-start may carry across stages
# torch's L-BFGS steps inside step(): its step is projected onto [0, 1] before the next evaluation.
# Ours projects its candidates itself (lbfgs.py: the curvature pairs need the projected step).
# Every other optimiser is clamped after its step, which is the same projection.
CLAMP_IN_CLOSURE = ("lbfgs-torch",)
PROJECTS_ITSELF = ("lbfgs",)


def make_optimizer(name: str, image: Tensor, lr: float) -> torch.optim.Optimizer:
    """The optimiser ``name`` over the one tensor ``image``, with this project's fixed settings."""
    params = [image]
    if name == "lbfgs":  # the same steps as torch's below, without a host read (lbfgs.py)
        return DeviceLBFGS(params, lr=lr, history_size=lbfgs_history(image[0, 0].numel()), bounds=(0.0, 1.0))
    if name == "lbfgs-torch":
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
    known = ", ".join(OPTIMIZERS)
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


def _read_back(terms: LossTerms, image: Tensor) -> tuple[dict[str, float], bool]:
    """The loss terms and whether the image is finite, in ONE device-to-host read (one sync)."""
    flags = [v.detach().float() for v in terms.values()] + [torch.isfinite(image).all().float()]
    *values, finite = torch.stack(flags).tolist()
    return dict(zip(terms, values, strict=True)), bool(finite)


def _check_finite(values: dict[str, float], finite: bool, where: str) -> None:
    if not math.isfinite(values["total"]):
        raise NumericalError(f"the loss became {values['total']} {where}; "
                             "try a lower --lr or --style-weight")
    # A finite loss with a non-finite gradient poisons the image one step before the loss
    # shows it; on the last iteration that returned a NaN image without any error.
    if not finite:
        raise NumericalError(f"the image became non-finite {where}; "
                             "try a lower --lr or --style-weight")


class Best:
    """The lowest-loss point evaluated so far and its loss terms, kept on the device: no host read.

    Every evaluation is offered; ``better`` (a 0-d bool tensor) decides with ``torch.where``.
    Our L-BFGS keeps that point itself (its accepted point), so for it only the terms are kept here
    (``image`` None) and its own acceptance is the decision.
    """

    def __init__(self, image: Tensor | None) -> None:
        self.image = image  # (1, 3, H, W) buffer, or None
        self.terms: LossTerms = {}

    def offer(self, terms: LossTerms, point: Tensor | None = None, better: Tensor | None = None) -> None:
        if not self.terms:  # the first evaluation is the best so far
            self.terms = dict(terms)
            if self.image is not None and point is not None:
                self.image.copy_(point)
            return
        if better is None:
            better = terms["total"] < self.terms["total"]  # NaN is never better
        self.terms = {k: torch.where(better, v, self.terms[k]) for k, v in terms.items()}
        if self.image is not None and point is not None:
            torch.where(better, point, self.image, out=self.image)

    def state(self) -> dict[str, Tensor]:
        """For a progress checkpoint (``split_best`` takes it back out)."""
        if self.image is None or not self.terms:
            return {}
        return {BEST_IMAGE: self.image, **{f"{BEST}{k}": v for k, v in self.terms.items()}}

    def restore(self, saved: dict[str, Tensor]) -> None:
        if self.image is not None and saved:
            self.image.copy_(saved[BEST_IMAGE])
            self.terms = {k[len(BEST):]: v.to(self.image.device) for k, v in saved.items() if k != BEST_IMAGE}


BEST = "best."  # checkpoint keys of the best point: best.image and best.<term>
BEST_IMAGE = BEST + "image"


def split_best(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A checkpoint's state as (the rest, the best point's); older checkpoints have no best point."""
    best = {k: v for k, v in state.items() if k.startswith(BEST)}
    return {k: v for k, v in state.items() if not k.startswith(BEST)}, best


def shown(image: Tensor, state: Mapping[str, Tensor] | None) -> Tensor:
    """What a stage in progress would write: the average its ``state`` carries, else its best
    point, else ``image``."""
    rest, average = split_state(state)
    if average:
        return average[SUM] / average[WEIGHT]
    return split_best(rest)[1].get(BEST_IMAGE, image)


class Stepper:
    """One optimiser over one image, stepped one loss-and-gradient evaluation at a time.

    The loop of ``optimize_with_state`` and the memory measurement (``memmeasure``) both step
    through this, so what is measured is what renders run. ``result`` is the lowest-loss point
    evaluated (``Best``; for our L-BFGS its accepted point), never a later, worse iterate. With
    ``average`` (a decay in (0, 1)) it also keeps the iterates' moving average (averaging.py),
    which is then the stage's ``result`` (the average is never evaluated, so it cannot be
    compared); ``warm_state`` may carry that average's buffers and the best point (a resumed stage)
    beside Adam's moments.
    """

    def __init__(self, image: Tensor, objective: Callable[[Tensor], LossTerms], optimizer: str, lr: float,
                 warm_state: dict[str, Tensor] | None = None, average: float = 0.0) -> None:
        warm_state, carried = split_state(warm_state)
        warm_state, best = split_best(warm_state)
        self.image = image.detach().clone().requires_grad_(True)
        self.average = IterateAverage(average, self.image, carried) if average else None
        self.objective, self.optimizer = objective, optimizer
        self.opt = make_optimizer(optimizer, self.image, lr)
        self.best = Best(None if isinstance(self.opt, DeviceLBFGS) else torch.empty_like(self.image.detach()))
        self.best.restore(best)
        if warm_state and optimizer in ADAM_LIKE:
            # The step count stays where Adam keeps it (the CPU): on the device, each step would
            # read it back twice (bias corrections).
            self.opt.state[self.image] = {k: v.clone() if k == "step" else v.to(self.image.device).clone()
                                          for k, v in warm_state.items()}
        self.grad_scale = float(self.image[0, 0].numel()) if optimizer in PIXEL_SCALED else 1.0
        self.terms: LossTerms = {}

    def _closure(self) -> Tensor:
        image = self.image
        if self.optimizer in CLAMP_IN_CLOSURE:
            # Evaluate the image as it will be written: project L-BFGS' step onto [0, 1] first (as
            # the PyTorch tutorial does). Unbounded, it parks a few % of the pixels out of range,
            # and the final clamp then costs a fifth of the style it reached (benchmarks/lbfgs_range.py).
            with torch.no_grad():
                image.clamp_(0, 1)
        image.grad = None  # the last gradient is in the optimiser's state by now: don't hold two
        self.terms = self.objective(image)
        if self.grad_scale != 1.0 and image.grad is not None:
            image.grad.mul_(self.grad_scale)
        if self.best.image is not None:  # before the step moves the image on
            self.best.offer(self.terms, image.detach())
        return self.terms["total"]

    def step(self) -> None:
        # torch types a closure as returning a float; every optimiser takes the loss tensor (its own L-BFGS too)
        self.opt.step(self._closure)  # type: ignore[arg-type]
        if isinstance(self.opt, DeviceLBFGS):
            self.best.offer(self.terms, better=self.opt.state[self.image]["accepted"])
        if self.optimizer not in CLAMP_IN_CLOSURE + PROJECTS_ITSELF:  # project the step onto [0, 1]
            with torch.no_grad():
                self.image.clamp_(0, 1)
        if self.average is not None:  # torch's L-BFGS projects at its next evaluation: average what it will see
            iterate = self.image.detach()
            self.average.update(iterate.clamp(0, 1) if self.optimizer in CLAMP_IN_CLOSURE else iterate)

    def best_image(self) -> Tensor:
        """The lowest-loss point evaluated so far (the start, before any step)."""
        if isinstance(self.opt, DeviceLBFGS):
            return self.opt.accepted_image()
        best = self.best.image  # a buffer for every optimiser but ours
        return best if best is not None and self.best.terms else self.image.detach()

    def shown(self) -> Tensor:
        """What a report shows and an interrupted stage writes: the average if kept, else the best point."""
        return self.best_image() if self.average is None else self.result()

    def result(self) -> Tensor:
        """What the stage hands on and writes: the average of the iterates if kept, else the best point."""
        average = self.average
        image = self.best_image() if average is None or average.empty else average.value()
        return image.clamp(0, 1)

    def resume_image(self) -> Tensor:
        """The image a resumed stage goes on from: the iterate that Adam's (or another's) state
        belongs to; for our L-BFGS, whose history is not saved, its accepted point."""
        return self.best_image() if isinstance(self.opt, DeviceLBFGS) else self.image.detach()

    def state(self) -> dict[str, Tensor]:
        """The optimiser's state that may go on to the next stage (Adam's moments; the average does not)."""
        return _live_state(self.opt, self.image, self.optimizer)

    def saved_state(self) -> dict[str, Tensor]:
        """``state``, the average's buffers and the best point: what a resume of this stage needs
        beside ``resume_image``."""
        average = self.average.state() if self.average is not None else {}
        return {**self.state(), **average, **self.best.state()}


class Stopped(KeyboardInterrupt):
    """Ctrl-C or SIGTERM ended a stage after ``iteration``: what a resume goes on from (``image``,
    ``state``: ``Stepper.resume_image`` and ``saved_state``) and what it shows (``shown``), so that
    the iterations it finished are saved, not lost. A KeyboardInterrupt still (whoever catches that
    stops as before)."""

    def __init__(self, iteration: int, image: Tensor, state: dict[str, Tensor], shown: Tensor) -> None:
        super().__init__(f"stopped after iteration {iteration}")
        self.iteration, self.image, self.state, self.shown = iteration, image, state, shown


@dataclass
class Convergence:
    """Ends a stage early once its best loss fell by less than ``tolerance`` (a fraction of it)
    over the last ``patience`` iterations. It sees the losses only at report points, which read
    the device anyway: it adds no host read. ``tolerance`` 0: never."""

    tolerance: float = 0.0
    patience: int = 50
    seen: list[tuple[int, float]] = field(default_factory=list)  # (iteration, best total) per report

    def converged(self, iteration: int, total: float) -> bool:
        if self.tolerance <= 0:
            return False
        self.seen.append((iteration, total))
        earlier = [k for k, (at, _) in enumerate(self.seen) if at <= iteration - self.patience]
        if not earlier:
            return False
        del self.seen[:earlier[-1]]  # keep the newest report at least ``patience`` iterations back
        before = self.seen[0][1]
        return before - total <= self.tolerance * abs(before)


def optimize_with_state(image: Tensor, objective: Callable[[Tensor], LossTerms], *, optimizer: str, lr: float,
                        iterations: int, on_step: StepCallback | None = None,
                        warm_state: dict[str, Tensor] | None = None, sync_every: int = 1,
                        done: int = 0, on_state: StateCallback | None = None,
                        average: float = 0.0, stop: Convergence | None = None,
                        stop_on_signal: bool = False) -> tuple[Tensor, dict[str, Tensor]]:
    """``optimize`` that also returns Adam's (or AdamW's) final state and may start from a previous one.

    ``warm_state`` (Adam, AdamW) must already have the image's size (see ``resize_adam_state``).
    Other optimisers return an empty state: L-BFGS' history belongs to one image size, and the
    others restart at each stage. ``done`` iterations of ``iterations`` already ran (a stage
    resumed from its saved progress): the loop runs the rest and numbers them on from ``done``.
    ``on_state`` follows each ``on_step`` with the image to resume from and the state that goes
    with it (Adam's moments, the average's buffers, the best point), for checkpoints.

    The result is the lowest-loss point evaluated (``Stepper.result``), and the losses reported
    are its losses: they never rise. ``stop`` (``Convergence``) may end the stage before
    ``iterations``; the last iteration ``on_step`` saw is the one it ended at.

    ``average`` > 0 (``--average-iterates``): the result is the moving average of the iterates
    (averaging.py), and ``on_step`` sees that average, what would be written. The losses reported
    are still those of the best iterate (the average is never evaluated in the loop).

    Losses are read back, checked for inf/NaN and reported every ``sync_every`` iterations and at
    the last: each read waits for the device, so on a GPU the loop otherwise runs ahead of it.
    (Adam and our L-BFGS gain from this; torch's L-BFGS, ``lbfgs-torch``, reads values itself at
    every step.)

    A KeyboardInterrupt after a whole step (from ``on_step``, ``on_state``, or a read) leaves as
    ``Stopped``, carrying that iteration's image and state; one in the middle of a step (its state
    half updated) leaves as it came. ``stop_on_signal``: SIGINT/SIGTERM end the loop after the
    iteration in progress (``safety.stop_requests``), reported like any other, then as ``Stopped``.
    """
    stepper = Stepper(image, objective, optimizer, lr, warm_state, average)
    sync_every, stop = max(1, sync_every), stop or Convergence()
    start, reported = time.perf_counter(), done
    whole = done  # the iteration the stepper's state belongs to; -1 while a step is under way
    with stop_requests(stop_on_signal) as request:
        try:
            for iteration in range(done + 1, iterations + 1):
                whole = -1
                stepper.step()
                whole = iteration
                if iteration % sync_every and iteration != iterations and not request.made:
                    continue
                values, finite = _read_back(stepper.best.terms, stepper.image)  # one wait for the device, not five
                _check_finite(values, finite, f"{'at' if sync_every == 1 else 'by'} iteration {iteration}")
                if on_step is not None:
                    on_step(iteration, values, (time.perf_counter() - start) / (iteration - reported), stepper.shown())
                if on_state is not None:
                    on_state(iteration, stepper.resume_image(), stepper.saved_state())
                start, reported = time.perf_counter(), iteration
                if request.made:
                    raise KeyboardInterrupt
                if stop.converged(iteration, values["total"]):
                    break
        except KeyboardInterrupt as exc:
            if isinstance(exc, Stopped) or whole <= done:  # nothing new, or a step cut in half
                raise
            raise Stopped(whole, stepper.resume_image(), stepper.saved_state(), stepper.shown()) from None
    return stepper.result(), stepper.state()


def _live_state(opt: torch.optim.Optimizer, image: Tensor, optimizer: str) -> dict[str, Tensor]:
    """Adam's (AdamW's) moments and step count; nothing for the others (see optimize_with_state)."""
    return {k: v.detach() for k, v in opt.state[image].items()} if optimizer in ADAM_LIKE else {}
