"""Iterate averaging: an exponential moving average of the image over one stage's iterations.

Each optimiser step leaves some high-frequency jitter in the image (Adam's steps never shrink to
zero; L-BFGS zig-zags on the style loss's narrow valleys). Averaging the iterates cancels that
jitter while keeping what they agree on, so the average is cleaner than the last iterate at about
the same loss. crowsonkb's style-transfer-pytorch writes such an average; so do we, with
``--average-iterates DECAY``:

    sum    <- d * sum    + (1 - d) * x_k      after each step k = 1..n
    weight <- d * weight + (1 - d)            (= 1 - d^n)
    value  =  sum / weight

``weight`` is the bias correction (as Adam's moments have): without it the first iterates would
be averaged with an all-zero image. Unlike crowsonkb's, the stage's start is not counted as an
iterate: at a later stage it is the previous result upsampled, blurrier than anything the stage
makes. Both buffers live on the image's device and are updated in place: no host read.

The average belongs to one stage. A stage hands it on (upsampled) and the last stage writes it;
the optimiser keeps stepping the iterate, which the average never feeds back into. A stage saved
in progress carries both buffers (``state``), so a resume continues the same average.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

# Keys of the average's buffers in a checkpoint, beside the optimiser's (Adam's "exp_avg", ...).
SUM, WEIGHT = "average.sum", "average.weight"
KEYS = (SUM, WEIGHT)


def check_decay(decay: float) -> None:
    """Decays outside [0, 1) average nothing (1 never moves, above 1 or below 0 diverge)."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"the averaging decay must be in [0, 1), got {decay!r}")


class IterateAverage:
    """The bias-corrected EMA of the iterates of one stage; ``decay`` 0 is the last iterate itself."""

    def __init__(self, decay: float, image: Tensor, saved: Mapping[str, Tensor] | None = None) -> None:
        check_decay(decay)
        self.decay = decay
        if saved:  # a resumed stage: the buffers as its progress save left them
            self.sum = saved[SUM].to(image.device, torch.float32).clone()  # (1, 3, H, W)
            self.weight = saved[WEIGHT].to(image.device, torch.float32).clone()  # () = 1 - d^k
        else:
            self.sum = torch.zeros_like(image, dtype=torch.float32)
            self.weight = torch.zeros((), dtype=torch.float32, device=image.device)
        self.empty = not saved  # a Python flag, so that asking needs no read of ``weight``

    def update(self, image: Tensor) -> None:
        """Fold in the iterate after one step (in place, on the device)."""
        decay = self.decay
        self.sum.mul_(decay).add_(image.detach(), alpha=1.0 - decay)
        self.weight.mul_(decay).add_(1.0 - decay)
        self.empty = False

    def value(self) -> Tensor:
        """The average (1, 3, H, W); only after at least one ``update`` (or a resume)."""
        return self.sum / self.weight

    def state(self) -> dict[str, Tensor]:
        """The buffers, for a progress checkpoint (``split_state`` takes them back out)."""
        return {SUM: self.sum.detach(), WEIGHT: self.weight.detach()}


def split_state(state: Mapping[str, Tensor] | None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """A checkpoint's state as (the optimiser's, the average's); either may be empty.

    Checkpoints written before averaging existed hold only the optimiser's keys.
    """
    state = dict(state or {})
    average = {k: state.pop(k) for k in KEYS if k in state}
    return state, average if len(average) == len(KEYS) else {}
