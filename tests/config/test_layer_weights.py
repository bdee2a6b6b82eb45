"""--content-layers / --style-layers / --style-layer-weights: parsing, errors, and the weights the loss uses."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hires_nst.cli.main import app
from hires_nst.config.settings import parse_layer_weights, resolve
from hires_nst.engine.plan import loss_weights
from hires_nst.engine.render import RenderJob
from hires_nst.errors import ConfigError

STYLE = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")


def _config(**loss):
    return resolve(("test", {"loss": loss}))


@pytest.mark.default_loss
def test_halving_is_the_default_and_is_16_8_4_2_1_for_five_layers() -> None:
    config = _config()
    assert config.loss.style_layer_weights == "halving" and config.loss.style_weight == 15.0
    assert parse_layer_weights("halving", STYLE) == (16.0, 8.0, 4.0, 2.0, 1.0)
    assert parse_layer_weights("descending", STYLE) == (256.0, 64.0, 16.0, 4.0, 1.0)
    assert loss_weights(config).style_layers == loss_weights(_config(style_layer_weights="16:8:4:2:1")).style_layers
    assert loss_weights(config).content_layers == {"conv4_2": 1.0}
    # Any other number of layers keeps the ratio (a fixed list would not fit them).
    assert loss_weights(_config(style_layers="conv1_1,conv3_1")).style_layers == {
        "conv1_1": pytest.approx(2 / 3), "conv3_1": pytest.approx(1 / 3)}


def test_equal_gives_each_layer_a_fifth() -> None:
    assert parse_layer_weights("equal", STYLE) is None
    equal = loss_weights(_config(style_layer_weights="equal"))
    assert equal.style_layers == {name: pytest.approx(0.2) for name in STYLE}


@pytest.mark.parametrize("text", ["256:64:16:4:1", "256,64,16,4,1", " 256 : 64 : 16 : 4 : 1 "])
def test_a_list_of_weights_in_either_spelling(text: str) -> None:
    assert parse_layer_weights(text, STYLE) == (256.0, 64.0, 16.0, 4.0, 1.0)


def test_the_weights_are_normalised_to_sum_one_in_the_order_of_the_layers() -> None:
    weights = loss_weights(_config(style_layer_weights="256:64:16:4:1"))
    assert list(weights.style_layers) == list(STYLE)
    assert [weights.style_layers[n] for n in STYLE] == pytest.approx([256 / 341, 64 / 341, 16 / 341, 4 / 341, 1 / 341])
    reordered = loss_weights(_config(style_layers="conv5_1,conv1_1", style_layer_weights="3:1"))
    assert reordered.style_layers == {"conv5_1": pytest.approx(0.75), "conv1_1": pytest.approx(0.25)}


def test_a_layer_named_twice_by_its_alias_adds_its_weights() -> None:
    weights = loss_weights(_config(style_layers="relu1_1,conv1_1,conv2_1", style_layer_weights="1:1:2"))
    assert weights.style_layers == {"conv1_1": pytest.approx(0.5), "conv2_1": pytest.approx(0.5)}


def test_several_content_layers_share_the_content_weight_equally() -> None:
    weights = loss_weights(_config(content_layers="conv4_2,relu5_2"))
    assert weights.content_layers == {"conv4_2": 0.5, "conv5_2": 0.5}


@pytest.mark.parametrize("loss, message", [
    ({"style_layer_weights": "1:2"}, "--style-layer-weights has 2 weights for 5 style layers \\(conv1_1, conv2_1, "),
    ({"style_layer_weights": "1:2:3:4:5:6"}, "has 6 weights for 5 style layers"),
    ({"style_layer_weights": "1:x:1:1:1"},
     "must be 'halving', 'descending', 'equal' or numbers like 16:8:4:2:1, got '1:x:1:1:1'"),
    ({"style_layer_weights": "1:-1:1:1:1"}, "finite weights >= 0 with a positive sum"),
    ({"style_layer_weights": "0:0:0:0:0"}, "positive sum"),
    ({"style_layer_weights": "nan:1:1:1:1"}, "finite weights"),
    ({"style_layer_weights": "equals"}, "must be 'halving', 'descending', 'equal' or numbers"),
    ({"content_layers": "conv6_1"}, "unknown layer 'conv6_1' for vgg19; valid layers: conv1_1, conv1_2, "),
    ({"style_layers": "pool1"}, "unknown layer 'pool1'"),
])
def test_mistakes_are_config_errors_that_say_what_is_valid(loss: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**loss)


def test_layer_options_reach_the_engine(tmp_path: Path, fake_render: list[RenderJob]) -> None:
    jobs = fake_render
    args = ["render", "c.png", "s.png", "-o", str(tmp_path / "o.png"), "--content-layers", "conv5_2",
            "--style-layers", "conv1_1:conv3_1", "--style-layer-weights", "4:1", "--backbone", "vgg16",
            "--weights", "random", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    loss = jobs[0].config.loss
    assert (loss.content_layers, loss.style_layers, loss.style_layer_weights) == (("conv5_2",), ("conv1_1", "conv3_1"),
                                                                                   "4:1")
    assert (jobs[0].config.model.backbone, jobs[0].config.model.weights) == ("vgg16", "random")


def test_layers_command_lists_names_channels_and_downsampling() -> None:
    runner = CliRunner()
    vgg = runner.invoke(app, ["layers"])
    assert vgg.exit_code == 0 and "conv5_4" in vgg.stdout and "relu4_2" in vgg.stdout
    assert "--content-layers conv4_2 --style-layers conv1_1,conv2_1,conv3_1,conv4_1,conv5_1" in vgg.stdout
    vgg16 = runner.invoke(app, ["layers", "--backbone", "vgg16"])
    assert "conv5_3" in vgg16.stdout and "conv5_4" not in vgg16.stdout
    resnet = runner.invoke(app, ["layers", "--backbone", "resnet50"])
    row = next(line for line in resnet.stdout.splitlines() if " layer3 " in line)
    assert "layer3_6" in row and "1024" in row and "1/16" in row
    assert "never tiled" in resnet.stdout
    bad = runner.invoke(app, ["layers", "--backbone", "alexnet"])
    assert bad.exit_code == 2 and "unknown backbone 'alexnet'" in bad.stderr


@pytest.mark.default_loss
def test_new_settings_at_their_defaults_leave_the_resume_fingerprint_as_it_was(tmp_path: Path) -> None:
    from hires_nst.engine.resume import fingerprint

    for name in ("c.png", "s.png"):
        (tmp_path / name).write_bytes(b"x")

    def settings(**layers) -> dict:
        job = RenderJob(tmp_path / "c.png", (tmp_path / "s.png",), tmp_path / "o.png", resolve(("test", layers)))
        return fingerprint(job)["settings"]

    default = settings()
    assert "backbone" not in default["model"]
    # The loss of older work dirs (the gatys preset's) leaves them out; today's default loss differs.
    gatys = settings(loss={"style_layer_weights": "equal", "style_loss": "gram"})
    assert "style_layer_weights" not in gatys["loss"] and "style_loss" not in gatys["loss"]
    assert default["loss"]["style_layer_weights"] == "halving" and default["loss"]["style_loss"] == "w2"
    assert settings(loss={"style_layer_weights": "4:3:2:1:1"})["loss"]["style_layer_weights"] == "4:3:2:1:1"
    assert settings(model={"backbone": "vgg16", "weights": "random"})["model"]["backbone"] == "vgg16"
    assert settings(output={"animate": str(tmp_path / "a.gif")}) == default  # an animation changes no pixel


def test_per_stage_values_run_coarse_to_fine_and_the_last_holds_for_finer_stages() -> None:
    config = _config(style_layer_weights="equal/16:8:4:2:1/descending", style_loss="gram/w2")
    by_stage = [loss_weights(config, i) for i in range(5)]
    assert by_stage[0].style_layers == {name: pytest.approx(0.2) for name in STYLE}
    assert by_stage[1].style_layers["conv1_1"] == pytest.approx(16 / 31)
    assert [w.style_layers["conv1_1"] for w in by_stage[2:]] == [pytest.approx(256 / 341)] * 3
    assert [w.style_loss for w in by_stage] == ["gram", "w2", "w2", "w2", "w2"]


@pytest.mark.parametrize("loss, message", [({"style_layer_weights": "equal/steep"}, "--style-layer-weights"),
                                           ({"style_loss": "w2/gramm"}, "--style-loss")])
def test_a_bad_value_for_any_stage_is_refused(loss: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _config(**loss)
