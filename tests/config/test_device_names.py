"""--device and --devices are read when the config is resolved: a name torch would refuse, or a list
that mixes kinds or names a CUDA device twice, is a usage error (exit 2) naming the flag, before
any work; what only the machine knows (CUDA present, how many) stays the render's to find."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hires_nst.cli.main import app
from hires_nst.config.devices import DeviceName, device_list, device_name
from hires_nst.config.settings import resolve
from hires_nst.errors import ConfigError

NAMES = ["cpu", "cuda", "cuda:0", "cuda:12", "cpu:0", "CUDA", "cuda:01", "cuda:-1", "cuda:", "cuda: 1", " cpu",
         "mps", "gpu", "tpu", "cuda:1a", ""]


@pytest.mark.parametrize("text", NAMES)
def test_a_name_is_taken_exactly_when_torch_takes_it_as_a_cpu_or_cuda_device(text: str) -> None:
    try:
        taken_by_torch = torch.device(text).type in ("cpu", "cuda")
    except RuntimeError:
        taken_by_torch = False
    try:
        name = device_name(text, "--device")
    except ConfigError as exc:
        assert not taken_by_torch, exc
        assert str(exc).startswith("--device: unknown device ")
    else:
        assert taken_by_torch and torch.device(str(name)) == torch.device(text)


def test_device_lists() -> None:
    assert device_list("") == () and device_list("  ") == ()
    assert device_list("all") is None  # every CUDA device: the machine says how many
    assert device_list(" cpu , cpu ") == (DeviceName("cpu"), DeviceName("cpu"))
    assert device_list("cuda:1,cuda:0,cuda") == (DeviceName("cuda", 1), DeviceName("cuda", 0), DeviceName("cuda"))


@pytest.mark.parametrize("devices,message", [
    ("cpu,tpu", "--devices: unknown device 'tpu'; use cpu, cuda or cuda:N"),
    ("cpu,,cpu", "--devices cpu,,cpu: empty device name"),
    ("cpu,cuda:0", "--devices cpu,cuda:0: mixes CPU and CUDA devices; use one kind"),
    ("cuda:1,cuda:1", "--devices cuda:1,cuda:1: a CUDA device is listed twice"),
    ("auto", "--devices: unknown device 'auto'"),
])
def test_a_bad_devices_value_is_a_config_error_naming_the_flag(devices: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}"):
        resolve(("test", {"device": {"devices": devices}}))


def test_a_bad_device_is_a_config_error_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--device: unknown device 'gpu'; use auto, cpu, cuda or cuda:N$"):
        resolve(("test", {"device": {"device": "gpu"}}))
    assert resolve(("test", {"device": {"device": "cuda:3", "devices": "cuda:0,cuda:1"}}))  # names only: no machine


def test_a_bad_devices_flag_exits_2_with_one_line_before_any_work(tmp_path: Path) -> None:
    for name in ("c.png", "s.png"):
        Image.new("RGB", (32, 32), (120, 80, 40)).save(tmp_path / name)
    result = CliRunner().invoke(app, ["render", str(tmp_path / "c.png"), str(tmp_path / "s.png"), "-o",
                                      str(tmp_path / "out.png"), "--devices", "cuda:0,gpu", "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == ["error: --devices: unknown device 'gpu'; use cpu, cuda or cuda:N"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png", "s.png"]
