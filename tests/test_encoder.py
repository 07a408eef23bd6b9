import keras
import numpy as np
import pytest

from captioner.errors import CaptionerError
from captioner.models.encoder import ImageEncoder


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


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="takes gradients with tf.GradientTape")
def test_a_fine_tuned_backbone_keeps_batch_norm_in_inference_mode_and_still_learns():
    """Fine-tuning trains the backbone's weights, but its BatchNorm layers never switch to batch statistics: a
    training-mode call gives the inference output, and the moving statistics do not move."""
    import tensorflow as tf

    encoder = ImageEncoder("mobilenet_v2", image_size=32, weights=None, encoder_trainable=True)
    norms = [layer for layer in encoder.cnn.layers if isinstance(layer, keras.layers.BatchNormalization)]
    rng = np.random.default_rng(0)
    for layer in norms:  # statistics unlike any batch's, as in pretrained weights
        layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape).astype("float32"))
        layer.moving_variance.assign(rng.uniform(0.5, 2.0, size=layer.moving_variance.shape).astype("float32"))
    before = [layer.moving_mean.numpy().copy() for layer in norms]
    images = rng.integers(0, 255, (4, 32, 32, 3)).astype(np.uint8)
    inference, _ = encoder(images, training=False)
    with tf.GradientTape() as tape:
        training, _ = encoder(images, training=True)
        loss = tf.reduce_sum(training)
    np.testing.assert_allclose(training.numpy(), inference.numpy(), rtol=1e-5, atol=1e-5)
    for layer, mean in zip(norms, before):
        np.testing.assert_array_equal(layer.moving_mean.numpy(), mean)
    gradients = tape.gradient(loss, encoder.trainable_weights)
    assert encoder.trainable_weights and any(float(tf.reduce_sum(tf.abs(g))) > 0 for g in gradients if g is not None)


def test_a_weights_file_of_another_network_or_a_damaged_one_is_one_line(tmp_path):
    other = tmp_path / "other.weights.h5"
    keras.applications.MobileNetV2(alpha=0.5, include_top=False, weights=None, input_shape=(32, 32, 3)).save_weights(
        other
    )
    with pytest.raises(
        CaptionerError,
        match=r"does not fit: its layers or shapes do not match; expected keras.applications mobilenet_v2",
    ) as error:
        ImageEncoder("mobilenet_v2", image_size=32, weights=str(other))
    assert str(other) in str(error.value) and "\n" not in str(error.value)
    damaged = tmp_path / "damaged.weights.h5"
    damaged.write_bytes(other.read_bytes()[:5000])
    with pytest.raises(CaptionerError, match="cannot read weights file") as error:
        ImageEncoder("mobilenet_v2", image_size=32, weights=str(damaged))
    assert "\n" not in str(error.value)


def _draws_random_numbers(initializer_class) -> bool:
    try:
        first, second = (keras.ops.convert_to_numpy(initializer_class(seed=seed)((4, 4))) for seed in (1, 2))
    except TypeError:  # takes no seed: a constant (Zeros, Ones, Identity, Constant, STFT)
        return False
    return not np.array_equal(first, second)


def test_a_network_whose_weights_come_from_a_file_is_built_from_zeros_and_another_is_not():
    """`weights_from_file` spares JAX one compiled program per random weight shape; every random initialiser Keras
    has must be caught by name, so the list cannot silently fall behind a Keras release."""
    from captioner.backend import RANDOM_INITIALIZERS, weights_from_file

    random = {
        c.__name__
        for c in vars(keras.initializers).values()
        if isinstance(c, type) and issubclass(c, keras.initializers.Initializer) and _draws_random_numbers(c)
    }
    assert {"GlorotUniform", "Orthogonal", "RandomUniform"} <= random <= set(RANDOM_INITIALIZERS)

    def network():
        words = keras.Input((5,), dtype="int32")
        pixels = keras.Input((8, 8, 3))
        x = keras.layers.LSTM(4)(keras.layers.Embedding(10, 3)(words))  # (b, 4)
        # (b, 4, 4, 4)
        y = keras.layers.DepthwiseConv2D(3)(keras.layers.Conv2D(4, 3, kernel_initializer="he_normal")(pixels))
        return keras.Model(
            [words, pixels], [keras.layers.Dense(2)(x), keras.layers.GRU(2)(keras.layers.Reshape((16, 4))(y))]
        )

    drawn = lambda model: [w for w in model.weights if "kernel" in w.path or "embeddings" in w.path]  # noqa: E731 (not biases)
    with weights_from_file():
        assert all(not np.any(keras.ops.convert_to_numpy(w)) for w in drawn(network()))
        assert isinstance(keras.initializers.get("glorot_uniform"), keras.initializers.Zeros)
    assert all(np.any(keras.ops.convert_to_numpy(w)) for w in drawn(network()))
    # the scope ends with the block
    assert isinstance(keras.initializers.get("glorot_uniform"), keras.initializers.GlorotUniform)
