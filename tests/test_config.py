import pytest

from captioner.config import RunConfig, apply_overrides, preset


def test_round_trip_through_dict():
    config = preset("tiny")
    assert RunConfig.from_dict(config.to_dict()) == config


def test_overrides_convert_to_declared_types():
    config = apply_overrides(
        preset("shapes"),
        {
            "train.epochs": "3",
            "train.learning_rate": "0.5",
            "data.cache_images": "false",
            "model.encoder_weights": "none",
            "model.encoder_filters": "4,8",
            "train.max_train_images": "10",
        },
    )
    assert config.train.epochs == 3 and config.train.learning_rate == 0.5
    assert config.data.cache_images is False and config.model.encoder_weights is None
    assert config.model.encoder_filters == [4, 8] and config.train.max_train_images == 10


@pytest.mark.parametrize(
    "key,value", [("train.nope", "1"), ("nope.epochs", "1"), ("train.epochs", "three"), ("data.cache_images", "maybe")]
)
def test_bad_overrides_are_refused(key, value):
    with pytest.raises(ValueError):
        apply_overrides(preset("shapes"), {key: value})


def test_unknown_keys_in_saved_config_are_refused():
    payload = preset("shapes").to_dict()
    payload["train"]["bogus"] = 1
    with pytest.raises(ValueError, match="bogus"):
        RunConfig.from_dict(payload)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")
