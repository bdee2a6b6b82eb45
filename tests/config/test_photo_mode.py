"""--photo: photo mode fills in its settings under every layer that names them; its preset."""

from __future__ import annotations

import pytest

from hires_nst.config.presets import load_preset, resolve_with_preset
from hires_nst.config.settings import PHOTO_MODE, LossConfig, resolve
from hires_nst.errors import ConfigError


def test_photo_mode_is_off_by_default_and_fills_in_its_weight_when_switched_on() -> None:
    assert (LossConfig().photo, LossConfig().photo_weight, LossConfig().photo_smooth) == (False, 0.0, "off")
    config = resolve(("flags", {"loss": {"photo": True}}))
    assert config.loss.photo_weight == PHOTO_MODE["loss"]["photo_weight"] > 0


def test_a_flag_or_a_preset_that_names_a_photo_mode_setting_wins_over_photo_mode() -> None:
    assert resolve(("flags", {"loss": {"photo": True, "photo_weight": 7}})).loss.photo_weight == 7.0
    named = resolve(("preset", {"loss": {"photo_weight": 3}}), ("flags", {"loss": {"photo": True}}))
    assert named.loss.photo_weight == 3.0
    assert resolve(("flags", {"loss": {"photo_weight": 5}})).loss.photo_weight == 5.0  # the regulariser alone


def test_the_photo_preset_is_photo_mode() -> None:
    assert load_preset("photo").layer == {"loss": {"photo": True}}
    assert resolve_with_preset("photo") == resolve(("flags", {"loss": {"photo": True}}))


@pytest.mark.parametrize("loss,flag", [({"photo_weight": -1.0}, "--photo-weight"),
                                       ({"photo_smooth": "blur"}, "--photo-smooth")])
def test_bad_photo_settings_name_their_flag(loss: dict, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        resolve(("flags", {"loss": loss}))
