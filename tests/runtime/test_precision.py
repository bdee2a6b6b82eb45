"""Precision (DESIGN.md 7): bf16/fp16 against fp32, fp16 loss scaling, the flags' errors, sync interval."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hires_nst.cli.main import app
from hires_nst.config.catalog import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS
from hires_nst.config.settings import resolve
from hires_nst.core import losses
from hires_nst.engine.objective import Objective, Weights, make_targets
from hires_nst.engine.optimize import optimize, optimize_with_state
from hires_nst.engine.tiling import make_objective
from hires_nst.errors import ConfigError, DeviceError
from hires_nst.model.features import VGGFeatures
from hires_nst.runtime import placement
from hires_nst.runtime.placement import (
    FP32,
    LossScale,
    Precision,
    default_sync_every,
    resolve_devices,
    resolve_precision,
)
from tests.helpers.synthetic import tiles_for

BF16 = Precision("bf16", channels_last=True)
FP16 = Precision("fp16", channels_last=True)  # refused on a CPU by resolve_precision; built directly to test it
FP32_CL = Precision("fp32", channels_last=True)  # what --precision fp32 gives: channels-last measured faster
CPU = torch.device("cpu")


def _content(size: int = 64) -> torch.Tensor:
    """Colour ramps with a bright disc: a smooth synthetic photo. (1, 3, H, W) in [0, 1]."""
    y = torch.linspace(0, 1, size).view(size, 1).expand(size, size)
    x = torch.linspace(0, 1, size).view(1, size).expand(size, size)
    disc = (((x - 0.6) ** 2 + (y - 0.4) ** 2) < 0.06).float()
    return torch.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.5 * (1 - x) + 0.5 * disc]).unsqueeze(0)


def _stripes(size: int = 64, period: int = 6) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    phase = ((xx + yy) % period < period // 2).float()
    return torch.stack([phase, 1 - phase, 0.5 * phase + 0.25]).unsqueeze(0)


@pytest.fixture(scope="module")
def weights() -> Weights:  # the paper's loss: a module fixture is made outside conftest's switch
    return Weights.equal_layers(1.0, 10.0, 0.0, DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, "gram")


def _start(size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return 0.7 * _content(size) + 0.3 * torch.rand(1, 3, size, size, generator=g)


def _objective(extractor: VGGFeatures, weights: Weights, precision: Precision, size: int = 64) -> Objective:
    targets = make_targets(extractor, _content(size), [_stripes(size)], [], weights, precision)
    return Objective(extractor, targets, weights, precision)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a * b).sum() / (a.norm() * b.norm()))


def _rel(a: torch.Tensor | float, b: torch.Tensor | float) -> float:
    return abs(float(a) - float(b)) / abs(float(b))


# --------------------------------------------------------------------------- low precision vs fp32

# Measured at 64 px: bf16 terms within 0.25% of fp32, gradient cosine 0.998; fp16 terms within 1e-4.
TERM_TOLERANCE = {"bf16": 0.02, "fp16": 0.005}


@pytest.mark.parametrize("precision", [BF16, FP16], ids=["bf16", "fp16"])
def test_low_precision_loss_and_gradient_match_fp32(extractor: VGGFeatures, weights: Weights,
                                                    precision: Precision) -> None:
    reference, image = _start(), _start()
    expected = _objective(extractor, weights, FP32)(reference)
    got = _objective(extractor, weights, precision)(image)

    for key in ("total", "content", "style"):
        assert got[key].dtype == torch.float32, key
        assert _rel(got[key], expected[key]) < TERM_TOLERANCE[precision.name], key
    assert image.grad.dtype == torch.float32 and bool(torch.isfinite(image.grad).all())
    assert image.grad.is_contiguous()  # a channels-last gradient broke L-BFGS' flat view
    assert _cosine(image.grad, reference.grad) > 0.99


def test_bf16_features_are_bf16_but_grams_accumulate_in_fp32(extractor: VGGFeatures) -> None:
    feats = BF16.features(extractor, _start())
    conv1 = feats["conv1_1"]  # (1, 64, 64, 64): 4096 positions per Gram entry
    assert conv1.dtype == torch.bfloat16 and conv1.is_contiguous(memory_format=torch.channels_last)
    assert not torch.is_autocast_enabled("cpu")  # autocast ends inside features()
    gram = losses.gram(conv1)
    exact = losses.gram(conv1.double())
    assert gram.dtype == torch.float32
    # bf16 accumulation would be off by ~1e-3 relative; fp32 by ~1e-7.
    assert float((gram - exact).norm() / exact.norm()) < 1e-5


def test_the_gram_of_bf16_features_keeps_no_float32_copy_for_the_backward_pass() -> None:
    features = torch.rand(1, 8, 16, 16, dtype=torch.bfloat16, requires_grad=True)
    saved: list[torch.dtype] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.dtype)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        gram = losses.gram_sum(features)
    (grad,) = torch.autograd.grad(gram.square().sum(), features)

    assert gram.dtype == torch.float32 and saved == [torch.bfloat16]
    wide = features.detach().double().reshape(8, -1)
    expected = (4 * (wide @ wide.T) @ wide).reshape(features.shape)  # d|F F^T|^2/dF = 4 F F^T F
    assert grad.dtype == torch.bfloat16 and float((grad.double() - expected).norm() / expected.norm()) < 1e-2


def test_tiles_are_sized_by_the_low_precision_figures_on_cuda_only() -> None:
    cuda = torch.device("cuda:0")
    assert BF16.memory_precision(cuda) == "bf16" and FP16.memory_precision(cuda) == "fp16"
    assert BF16.memory_precision(CPU) == "fp32" and FP32.memory_precision(cuda) == "fp32"
    assert BF16.low_precision_products(cuda) and not BF16.low_precision_products(CPU)
    assert not FP32.low_precision_products(cuda)


def test_channels_last_prepares_the_weights_in_that_format() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
    BF16.prepare(model)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert FP32.prepare(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3)))[0].weight.is_contiguous()


@pytest.mark.slow
def test_a_short_bf16_render_ends_within_5_percent_of_fp32(extractor: VGGFeatures, weights: Weights) -> None:
    # 20 L-BFGS steps at 64 px, each result scored by the fp32 objective: measured 0.03% (total),
    # 0.9% (content) and 0.3% (style) apart.
    results = {p.name: optimize(_start(), _objective(extractor, weights, p), optimizer="lbfgs", lr=1.0,
                                iterations=20) for p in (FP32, BF16)}
    judge = _objective(extractor, weights, FP32)
    scores = {name: judge.loss(image) for name, image in results.items()}
    assert float(scores["fp32"]["style"]) < 0.3  # it did optimise (0.9996 at the start)
    for key in ("total", "content", "style"):
        assert _rel(scores["bf16"][key], scores["fp32"][key]) < 0.05, key


def test_tiled_bf16_equals_untiled_bf16(extractor: VGGFeatures, weights: Weights) -> None:
    # Tiling stays exact under autocast: same windows' arithmetic, only the summation order differs.
    size = 96
    targets = make_targets(extractor, _content(size), [_stripes(size)], [], weights, BF16)
    tiled = make_objective(extractor, targets, weights, tiles_for(extractor, size, size, 48), BF16)
    untiled, image = _start(size), _start(size)
    expected = Objective(extractor, targets, weights, BF16)(untiled)
    got = tiled(image)
    for key in ("total", "content", "style"):
        assert _rel(got[key], expected[key]) < 1e-3, key
    assert _cosine(image.grad, untiled.grad) > 0.999


# --------------------------------------------------------------------------- fp16 loss scaling


def test_loss_scale_halves_on_overflow_and_returns_the_first_finite_gradient() -> None:
    calls: list[float] = []

    def backward(scale: float) -> torch.Tensor:  # overflows above 2**10, like an fp16 gradient would
        calls.append(scale)
        return torch.full((3,), float("inf") if scale > 2**10 else 0.5)

    scale = LossScale(enabled=True, initial=2.0**16)
    grad = scale.run(backward)

    assert grad.tolist() == [0.5, 0.5, 0.5]
    assert calls == [2.0**k for k in range(16, 9, -1)]
    assert (scale.scale, scale.overflows) == (2.0**10, 6)


def test_loss_scale_grows_after_good_steps_and_gives_up_at_one() -> None:
    scale = LossScale(enabled=True, initial=4.0, growth_interval=3)
    for _ in range(3):
        scale.run(lambda s: torch.zeros(2))
    assert scale.scale == 8.0
    nan = scale.run(lambda s: torch.full((2,), float("nan")))  # not an overflow: scaling cannot fix it
    assert bool(nan.isnan().all()) and scale.scale == 1.0


def test_loss_scale_is_one_call_at_scale_one_when_disabled() -> None:
    calls: list[float] = []
    LossScale(enabled=False).run(lambda s: calls.append(s) or torch.full((1,), float("inf")))
    assert calls == [1.0]
    assert FP32.loss_scale().enabled is False and BF16.loss_scale().enabled is False
    assert FP16.loss_scale().enabled is True


@pytest.mark.parametrize("tiled", [False, True], ids=["untiled", "tiled"])
def test_fp16_overflow_is_detected_and_the_evaluation_repeated(extractor: VGGFeatures, weights: Weights,
                                                               tiled: bool) -> None:
    # A scale of 2**28 overflows fp16 (max 65504) in the backward pass (2**25 does not, here); the
    # objective must halve it until the gradient is finite, and that gradient must be the fp32 one.
    size = 64
    targets = make_targets(extractor, _content(size), [_stripes(size)], [], weights, FP16)
    tiles = tiles_for(extractor, size, size, 32 if tiled else None)
    objective = make_objective(extractor, targets, weights, tiles, FP16)
    objective.loss_scale.scale = 2.0**28
    reference, image = _start(size), _start(size)
    _objective(extractor, weights, FP32)(reference)

    objective(image)

    assert objective.loss_scale.overflows > 0 and objective.loss_scale.scale < 2.0**28
    assert bool(torch.isfinite(image.grad).all())
    assert _cosine(image.grad, reference.grad) > 0.99


# --------------------------------------------------------------------------- choosing precision and devices


def test_auto_precision_is_bf16_where_supported_else_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement, "_supports_bf16", lambda device: True)
    assert resolve_precision("auto", [CPU]) == Precision("bf16", channels_last=True)
    monkeypatch.setattr(placement, "_supports_bf16", lambda device: False)
    assert resolve_precision("auto", [CPU]) == FP32_CL
    assert resolve_precision("fp32", [CPU]) == FP32_CL


def test_fp16_on_a_cpu_is_a_device_error() -> None:
    with pytest.raises(DeviceError, match="--precision fp16 needs CUDA"):
        resolve_precision("fp16", [CPU])


def test_bf16_on_a_cuda_device_without_bf16_is_a_device_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(placement, "_supports_bf16", lambda device: device.type == "cpu")
    with pytest.raises(DeviceError, match="--precision bf16: cuda:0 has no bf16 support"):
        resolve_precision("bf16", [torch.device("cuda:0")])
    assert resolve_precision("auto", [torch.device("cuda:0")]) == FP32_CL


def test_unknown_precision_is_a_config_error_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="--precision .*fp8"):
        resolve(("test", {"device": {"precision": "fp8"}}))
    with pytest.raises(ConfigError, match="--precision"):
        resolve_precision("half", [CPU])


def test_device_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hires_nst.runtime.placement.usable_cores", lambda: 4)
    assert resolve_devices("", "cpu") == (CPU,)
    assert resolve_devices("cpu,cpu") == (CPU, CPU)
    assert resolve_devices(" cpu , cpu ,cpu") == (CPU, CPU, CPU)
    for spec, message in [("tpu", "--devices: unknown device 'tpu'"), ("cpu,,cpu", "empty device name"),
                          ("cpu,mps", "--devices: unknown device 'mps'"), ("cpu,cuda", "mixes CPU and CUDA")]:
        with pytest.raises(ConfigError, match=message):  # what config.validate finds before any render
            resolve_devices(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("spec", ["all", "cuda:0,cuda:1", "cuda"])
def test_cuda_devices_without_cuda_are_a_device_error(spec: str) -> None:
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_devices(spec)


runner = CliRunner()


@pytest.mark.parametrize("flags,expected,code", [
    (["--precision", "fp8"], "--precision (device.precision) must be one of auto, fp32, bf16, fp16, got 'fp8'", 2),
    (["--device", "cpu", "--precision", "fp16"], "--precision fp16 needs CUDA devices", 1),
    (["--devices", "cpu,tpu"], "--devices: unknown device 'tpu'", 2),  # a setting's syntax: usage
    (["--device", "cuda:x"], "--device: unknown device 'cuda:x'; use auto, cpu, cuda or cuda:N", 2),
    (["--sync-every", "-1"], "--sync-every (device.sync_every) must be >= 0", 2),
] + ([] if torch.cuda.is_available() else [(["--devices", "cuda:0,cuda:1"], "CUDA is not available", 1)]))
def test_bad_device_flags_are_one_line_and_exit_1_or_2(tmp_path: Path, flags: list[str], expected: str,
                                                       code: int) -> None:
    from PIL import Image

    for name in ("c.png", "s.png"):
        Image.new("RGB", (32, 32), (120, 80, 40)).save(tmp_path / name)
    result = runner.invoke(app, ["render", str(tmp_path / "c.png"), str(tmp_path / "s.png"), "-o",
                                 str(tmp_path / "out.png"), "--work-dir", str(tmp_path / "work"), *flags])

    assert result.exit_code == code, result.output  # a setting's range or syntax: usage (2); the machine: 1
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ") and expected in line
    assert not (tmp_path / "out.png").exists()


# --------------------------------------------------------------------------- host-device synchronisation


def test_sync_interval_defaults_to_every_step_on_cpu_and_10_on_cuda() -> None:
    assert default_sync_every([CPU]) == 1
    assert default_sync_every([torch.device("cuda:0")]) == 10
    assert default_sync_every([torch.device("cuda:0")], setting=3) == 3


def test_sync_every_n_reports_every_n_steps_and_the_last_and_changes_no_pixel(extractor: VGGFeatures,
                                                                            weights: Weights) -> None:
    objective = _objective(extractor, weights, FP32, size=32)
    runs = {}
    for every in (1, 3):
        steps: list[tuple[int, float]] = []
        image, _ = optimize_with_state(_start(32), objective, optimizer="adam", lr=0.02, iterations=7,
                                       sync_every=every,
                                       on_step=lambda i, v, s, img, steps=steps: steps.append((i, v["total"])))
        runs[every] = (image, steps)
    assert [i for i, _ in runs[3][1]] == [3, 6, 7]
    assert [i for i, _ in runs[1][1]] == list(range(1, 8))
    assert torch.equal(runs[1][0], runs[3][0])
    assert dict(runs[3][1]) == {i: v for i, v in runs[1][1] if i in (3, 6, 7)}


@pytest.mark.parametrize("cores,most", [(2, 2), (1, 2), (8, 8)])
def test_more_cpu_ranks_than_cores_are_refused(monkeypatch: pytest.MonkeyPatch, cores: int, most: int) -> None:
    from hires_nst.batch.parallel import run_parallel

    monkeypatch.setattr("hires_nst.runtime.placement.usable_cores", lambda: cores)
    assert resolve_devices(",".join(["cpu"] * most)) == (CPU,) * most  # two always: cpu,cpu tests the logic
    for refused in (lambda: resolve_devices(",".join(["cpu"] * (most + 1))),
                    lambda: run_parallel([], None, print, ["cpu"] * (most + 1))):  # type: ignore[arg-type]
        with pytest.raises(DeviceError, match=f"{most + 1} CPU ranks .*{cores} core.*at most {most}"):
            refused()
