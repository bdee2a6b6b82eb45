"""What the memory cuts keep exact: index-free max pooling, the Gram product paths, the one
host read per report."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hires_nst.core import losses
from hires_nst.model.pooling import RecomputingMaxPool2d


def test_index_free_max_pooling_gives_the_same_values_and_gradients_ties_included() -> None:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 3, (1, 8, 10, 14), generator=generator).to(torch.float64)  # many ties
    grad = torch.randn(1, 8, 5, 7, generator=generator, dtype=torch.float64)
    ours, theirs = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = RecomputingMaxPool2d(2, 2)(ours)
    ref = nn.MaxPool2d(2, 2)(theirs)
    assert torch.equal(out, ref)
    out.backward(grad)
    ref.backward(grad)
    assert torch.equal(ours.grad, theirs.grad)


def test_index_free_max_pooling_saves_no_int64_indices() -> None:
    x = torch.rand(1, 4, 8, 8, requires_grad=True)
    out = RecomputingMaxPool2d()(x * 1.0)
    saved = [getattr(out.grad_fn, name) for name in dir(out.grad_fn) if name.startswith("_saved_")]
    assert not any(isinstance(t, torch.Tensor) and t.dtype == torch.int64 for t in saved)
    assert not any(isinstance(t, torch.Tensor) and t.dtype == torch.int64 for t in out.grad_fn.saved_tensors)


def test_the_cpu_gram_path_sums_bf16_features_exactly_as_fp32_would() -> None:
    # What CUDA's mm(bf16, bf16, out_dtype=fp32) computes: exact products summed in fp32. The CPU
    # fallback widens first; both equal the fp32 Gram of the bf16 values.
    features = torch.randn(1, 16, 12, 10, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    wide = features.float().reshape(16, -1)
    torch.testing.assert_close(losses.gram_sum(features), wide @ wide.T, rtol=1e-6, atol=1e-5)


def test_the_gram_backward_in_slices_equals_one_product(monkeypatch: pytest.MonkeyPatch) -> None:
    features = torch.randn(1, 8, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    weight = torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def grad_of() -> tuple[torch.Tensor, torch.Tensor]:
        leaf = features.clone().requires_grad_(True)
        value = losses.gram_sum(leaf)
        (grad,) = torch.autograd.grad((value * weight).sum(), leaf)
        return value, grad

    whole = grad_of()
    monkeypatch.setattr(losses, "WIDEN_CHUNK", 40)  # 256 positions in 7 slices, the last one short
    sliced = grad_of()
    torch.testing.assert_close(sliced[0], whole[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sliced[1], whole[1], rtol=1e-12, atol=1e-12)
    reference = features.reshape(8, -1)
    torch.testing.assert_close(whole[1].reshape(8, -1), (weight + weight.T) @ reference)


def test_bf16_gram_gradients_stay_within_bf16_rounding_of_fp32() -> None:
    features = torch.rand(1, 16, 12, 12, generator=torch.Generator().manual_seed(4))
    target = torch.rand(16, 16, generator=torch.Generator().manual_seed(5))

    def grad_in(dtype: torch.dtype) -> torch.Tensor:
        leaf = features.to(dtype).requires_grad_(True)
        loss = losses.relative_error(losses.gram(leaf), target)
        (grad,) = torch.autograd.grad(loss, leaf)
        return grad.float()

    torch.testing.assert_close(grad_in(torch.bfloat16), grad_in(torch.float32), rtol=2e-2, atol=1e-4)
