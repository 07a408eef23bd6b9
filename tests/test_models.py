import keras
import numpy as np
import pytest

from captioner.config import preset
from captioner.models.networks import CaptionModel, build_caption_model

pytestmark = pytest.mark.backends  # also run under KERAS_BACKEND=jax by `make test`


def _batch(vocab_size=20, batch=4, captions=3, steps=6, size=32, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (batch, size, size, 3)).astype(np.uint8)
    tokens = rng.integers(1, vocab_size, (batch, captions, steps)).astype(np.int32)
    targets = rng.integers(1, vocab_size, (batch, captions, steps)).astype(np.int32)
    targets[:, :, 4:] = 0
    targets[:, 2, :] = 0  # a missing caption
    return {"images": images, "tokens": tokens}, targets


def _model(decoder="show-tell"):
    config = preset("tiny").model
    config.decoder = decoder
    return build_caption_model(config, vocab_size=20, image_size=32)


def test_output_shape_and_one_encoding_per_image():
    model = _model()
    inputs, _ = _batch()
    assert model(inputs).shape == (4, 3, 6, 20)
    # Every caption of an image is decoded against the same encoding: duplicate captions give equal logits.
    inputs["tokens"][:, 1] = inputs["tokens"][:, 0]
    logits = np.asarray(model(inputs))
    np.testing.assert_allclose(logits[:, 0], logits[:, 1], rtol=1e-5, atol=1e-6)


def test_loss_is_cross_entropy_averaged_over_real_tokens_only():
    model = _model()
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0))
    inputs, targets = _batch()
    logits = np.asarray(model(inputs), dtype=np.float64)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    mask = targets > 0
    expected = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0][mask].mean()
    loss = model.evaluate(inputs, targets, batch_size=4, verbose=0)
    assert loss == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("decoder", ["show-tell", "attention"])
def test_gradients_reach_the_encoder(decoder):
    model = _model(decoder)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
    )
    inputs, targets = _batch()
    first_conv = model.encoder.cnn.layers[0].kernel
    before = first_conv.numpy().copy()
    model.train_on_batch(inputs, targets)
    assert np.abs(first_conv.numpy() - before).max() > 0


@pytest.mark.parametrize("decoder", ["show-tell", "attention"])
def test_save_and_load_give_identical_outputs(tmp_path, decoder):
    model = _model(decoder)
    inputs, _ = _batch()
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert isinstance(loaded, CaptionModel)
    np.testing.assert_array_equal(np.asarray(model(inputs)), np.asarray(loaded(inputs)))
    assert loaded.get_config() == model.get_config()


def test_attention_penalty_is_part_of_the_training_loss():
    model = _model("attention")
    inputs, targets = _batch()
    model(inputs, training=True)
    assert len(model.losses) == 1 and float(model.losses[0]) > 0
