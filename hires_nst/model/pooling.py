"""2x2 max pooling that keeps no indices for its backward pass: it finds them again.

``nn.MaxPool2d`` saves an int64 index per output value for the backward pass: 8 bytes where the
bf16 value itself takes 2, ~240 B per input pixel over VGG19's four poolings, a sixth of an
evaluation's peak. Its input is kept anyway (the in-place ReLU before it saves the same tensor),
so the backward recomputes the indices from it with the same kernel: the same argmax (ties
included), hence the same gradient bit for bit, for one more cheap pass over the input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, kernel: int, stride: int) -> Tensor:
        ctx.save_for_backward(x)
        ctx.kernel, ctx.stride = kernel, stride
        return F.max_pool2d(x, kernel, stride)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        _, indices = F.max_pool2d_with_indices(x, ctx.kernel, ctx.stride)
        out = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, [ctx.kernel] * 2, [ctx.stride] * 2,
                                                              [0, 0], [1, 1], False, indices)
        return out, None, None


class RecomputingMaxPool2d(nn.Module):
    """``nn.MaxPool2d(kernel, stride)`` (no padding, floor mode) with indices recomputed in backward."""

    def __init__(self, kernel_size: int = 2, stride: int = 2) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: Tensor) -> Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad):
            return F.max_pool2d(x, self.kernel_size, self.stride)
        return _MaxPool.apply(x, self.kernel_size, self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


def recomputing(module: nn.Module) -> nn.Module:
    """``module`` itself, or its index-free twin when it is a plain 2x2 ``nn.MaxPool2d``."""
    if (isinstance(module, nn.MaxPool2d) and module.padding == 0 and module.dilation == 1
            and not module.ceil_mode and not module.return_indices):
        kernel, stride = module.kernel_size, module.stride
        if isinstance(kernel, int) and isinstance(stride, int):
            return RecomputingMaxPool2d(kernel, stride)
    return module
