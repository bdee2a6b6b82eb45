"""L-BFGS whose every step stays on the device: no host read, so a GPU never waits for Python.

torch.optim.LBFGS turns tensors into Python numbers inside its two-loop recursion (``alpha=-al[i]``,
``if ys > 1e-10``, ``min(1, 1 / |g|)``): about ``2 x history + 5`` host syncs per step, ~205 at 100
pairs, so a GPU idles between a few hundred tiny kernels while the host waits. This one computes
the same direction without a single read:

* curvature pairs live in two ring buffers ``S``, ``Y`` of shape (m, N) in the image's dtype,
  allocated at the first step (the whole history's memory is known before the first evaluation);
* a pair that fails the curvature test (``y.s <= 1e-10``, as torch) is stored as zeros with
  ``rho = 0`` (``torch.where``, no branch): it then leaves both loops unchanged. Unlike torch it
  still takes a ring slot, so after a rejection the history holds one pair fewer for m steps;
* the two loops are solved in closed form from the small matrix ``SY[i, j] = s_i . y_j``: the
  first loop's ``alpha`` is one unit upper-triangular solve, the second loop's ``alpha - beta`` one
  unit lower-triangular solve (derivation in ``_direction``). Four matrix-vector products over the
  history plus two to keep ``SY`` current, ~20 kernels per step at any history size, against
  4 x history kernels (and 2 x history syncs) for the literal loops.

Step rule as torch's with ``max_iter=1`` and no line search: the first step is
``min(1, 1 / |g|_1) x lr`` along ``-g``, later ones ``lr`` along the L-BFGS direction; a direction
that is not a descent one (``g.d >= 0``) takes no step.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

CURVATURE_EPS = 1e-10  # torch.optim.LBFGS' test for keeping a pair


class DeviceLBFGS(torch.optim.Optimizer):
    """L-BFGS over one tensor with ``history_size`` pairs; ``step(closure)`` evaluates once.

    ``closure()`` returns the loss (a tensor, not read here) and leaves the gradient in ``.grad``.
    """

    def __init__(self, params, lr: float = 1.0, history_size: int = 100) -> None:
        if history_size < 1:
            raise ValueError(f"history_size must be >= 1, got {history_size}")
        super().__init__(params, {"lr": lr, "history_size": history_size})
        tensors = [p for group in self.param_groups for p in group["params"]]
        if len(tensors) != 1:
            raise ValueError("DeviceLBFGS optimises exactly one tensor (the image)")
        self._param = tensors[0]

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor]) -> Tensor:  # type: ignore[override]
        with torch.enable_grad():
            loss = closure()
        param, group = self._param, self.param_groups[0]
        grad = param.grad.reshape(-1)  # (N,), a view of the contiguous gradient
        state = self.state[param]
        if not state:
            _init_state(state, grad, group["history_size"])
            direction = grad.neg()
            scale = torch.clamp(grad.abs().sum().reciprocal(), max=1.0) * group["lr"]
        else:
            _remember_pair(state, grad)
            direction = _direction(state, grad)
            scale = torch.full((), group["lr"], dtype=grad.dtype, device=grad.device)
        slope = grad.dot(direction)
        # No step along a non-descent direction (NaN falls through, so a broken gradient still shows).
        scale = torch.where(slope >= 0, torch.zeros_like(scale), scale)
        param.view(-1).addcmul_(direction, scale)
        state["direction"], state["scale"] = direction, scale
        state["prev_grad"].copy_(grad)
        return loss


def _init_state(state: dict, grad: Tensor, history: int) -> None:
    """Zeroed ring buffers: an empty slot has s = y = 0 and rho = 0, which both loops pass over."""
    n = grad.numel()
    state["S"] = grad.new_zeros((history, n))  # steps s_i
    state["Y"] = grad.new_zeros((history, n))  # gradient changes y_i
    state["SY"] = grad.new_zeros((history, history))  # s_i . y_j
    state["rho"] = grad.new_zeros(history)  # 1 / (y_i . s_i), 0 for empty or rejected slots
    state["gamma"] = grad.new_ones(())  # initial inverse Hessian scale, y.s / y.y of the newest pair
    state["prev_grad"] = grad.clone()
    state["pairs"] = 0  # slots written so far (a host count, never read from the device)


def _remember_pair(state: dict, grad: Tensor) -> None:
    """Store the last step's pair in the next ring slot, zeros if it fails the curvature test."""
    S, Y, SY, rho = state["S"], state["Y"], state["SY"], state["rho"]
    slot = state["pairs"] % S.shape[0]
    y = grad - state["prev_grad"]
    s = state["direction"] * state["scale"]
    ys = y.dot(s)
    keep = ys > CURVATURE_EPS
    zero = grad.new_zeros(())
    torch.where(keep, s, zero, out=S[slot])
    torch.where(keep, y, zero, out=Y[slot])
    rho[slot] = torch.where(keep, ys.reciprocal(), zero)
    state["gamma"] = torch.where(keep, ys / y.dot(y), state["gamma"])
    torch.mv(Y, S[slot], out=SY[slot])  # s_slot . y_j for every j
    SY[:, slot] = torch.mv(S, Y[slot])  # s_i . y_slot for every i
    state["pairs"] += 1


def _direction(state: dict, grad: Tensor) -> Tensor:
    """The two-loop recursion's ``-H g`` without its loops (i runs oldest -> newest below).

    Loop 1 (newest first): ``a_i = rho_i s_i.(q0 - sum_{j>i} a_j y_j)`` with ``q0 = -g``, i.e.
    ``(I + diag(rho) U) a = rho * (S q0)``, U the strictly upper triangle of SY; then
    ``q = q0 - Y^T a`` and ``r0 = gamma q``. Loop 2 (oldest first): ``b_i = rho_i y_i.(r0 + sum_{j<i}
    c_j s_j)`` with ``c = a - b``, i.e. ``(I + diag(rho) L) c = a - rho * (Y r0)``, L the strictly
    lower triangle of SY^T; the direction is ``r0 + S^T c``.
    """
    S, Y, rho = state["S"], state["Y"], state["rho"]
    shift = -(state["pairs"] % S.shape[0])  # ring order -> chronological order (a host int)

    def chrono(v: Tensor) -> Tensor:
        return torch.roll(v, shift, dims=0)

    def ring(v: Tensor) -> Tensor:
        return torch.roll(v, -shift, dims=0)

    sy = torch.roll(state["SY"], (shift, shift), dims=(0, 1))
    rho_c = chrono(rho)
    q0 = grad.neg()
    upper = rho_c[:, None] * torch.triu(sy, 1)
    a = torch.linalg.solve_triangular(upper, (rho_c * chrono(S @ q0))[:, None], upper=True, unitriangular=True)[:, 0]
    r0 = torch.addmv(q0, Y.T, ring(a), alpha=-1).mul_(state["gamma"])
    lower = rho_c[:, None] * torch.tril(sy.T, -1)
    rhs = (a - rho_c * chrono(Y @ r0))[:, None]
    c = torch.linalg.solve_triangular(lower, rhs, upper=False, unitriangular=True)[:, 0]
    return torch.addmv(r0, S.T, ring(c))
