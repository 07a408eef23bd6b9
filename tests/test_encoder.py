import keras
import numpy as np
import pytest

from captioner.encoder import ImageEncoder
from captioner.errors import CaptionerError


def test_small_cnn_shapes():
    encoder = ImageEncoder("small_cnn", image_size=32, filters=[8, 16, 16], feature_dim=12)
    grid, pooled = encoder(np.zeros((2, 32, 32, 3), np.uint8))
    assert grid.shape == (2, 64, 16)  # two poolings: 32 -> 8, so 8*8 pixels
    assert pooled.shape == (2, 12)


def test_average_pooling_is_the_grid_mean():
    encoder = ImageEncoder("small_cnn", image_size=16, filters=[4, 4], pooling="avg")
    grid, pooled = encoder(np.random.default_rng(0).integers(0, 255, (2, 16, 16, 3)).astype(np.uint8))
    np.testing.assert_allclose(pooled, np.mean(grid, axis=1), rtol=1e-5, atol=1e-6)


def test_backbone_by_name_with_no_weights():
    encoder = ImageEncoder("mobilenet_v2", image_size=32, weights=None)
    grid, pooled = encoder(np.zeros((1, 32, 32, 3), np.uint8))
    assert grid.shape == (1, 1, 1280) and pooled.shape == (1, 1280)


def test_backbone_loads_a_local_weights_file(tmp_path):
    source = ImageEncoder("mobilenet_v2", image_size=32, weights=None)
    source.cnn.save_weights(tmp_path / "backbone.weights.h5")
    loaded = ImageEncoder("mobilenet_v2", image_size=32, weights=str(tmp_path / "backbone.weights.h5"))
    for a, b in zip(source.cnn.weights, loaded.cnn.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_config_lists_every_argument_and_rebuilds_without_weights_source():
    encoder = ImageEncoder("small_cnn", image_size=32, filters=[8, 16], feature_dim=10, encoder_trainable=False)
    config = encoder.get_config()
    for key in ("encoder", "image_size", "filters", "feature_dim", "pooling", "weights", "encoder_trainable"):
        assert key in config
    clone = ImageEncoder.from_config(config)
    assert clone.get_config() == config
    assert not clone.cnn.trainable


def test_bad_encoder_arguments():
    with pytest.raises(CaptionerError, match="unknown encoder"):
        ImageEncoder("vgg99")
    with pytest.raises(CaptionerError, match="does not exist"):
        ImageEncoder("mobilenet_v2", image_size=32, weights="/nowhere/weights.h5")
    with pytest.raises(CaptionerError, match="no pretrained weights"):
        ImageEncoder("small_cnn", weights="imagenet")
