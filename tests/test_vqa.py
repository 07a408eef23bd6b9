"""QuestionEncoder, VQAHead and VQAModel: shapes, masking, fusion options, save/load."""

import keras
import numpy as np
import pytest

from captioner.config import preset
from captioner.models.networks import VQAModel, build_vqa_model
from captioner.models.vqa_head import QuestionEncoder, VQAHead

pytestmark = pytest.mark.backends  # also run under KERAS_BACKEND=jax by `make test`


def _inputs(batch=3, questions=4, steps=5, size=32, vocab_size=20, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (batch, size, size, 3)).astype(np.uint8)
    tokens = rng.integers(1, vocab_size, (batch, questions, steps)).astype(np.int32)
    tokens[:, :, 3:] = 0  # padding
    return {"images": images, "questions": tokens}


def _model(**vqa):
    config = preset("tiny")
    for key, value in vqa.items():
        setattr(config.vqa, key, value)
    return build_vqa_model(config, question_vocab_size=20, num_answers=7, image_size=32)


def test_question_encoder_ignores_padding():
    encoder = QuestionEncoder(20, 8, 16)
    tokens = np.array([[5, 6, 7, 0, 0]], np.int32)
    longer = np.array([[5, 6, 7, 0, 0, 0, 0, 0]], np.int32)
    np.testing.assert_allclose(encoder(tokens), encoder(longer), rtol=1e-5, atol=1e-6)
    assert encoder(tokens).shape == (1, 16)


@pytest.mark.parametrize("options", [{}, {"fusion": "concat"}, {"attention": True}, {"use_image": False}])
def test_output_shape_and_one_encoding_per_image(options):
    model = _model(**options)
    inputs = _inputs()
    logits = np.asarray(model(inputs))
    assert logits.shape == (3, 4, 7)
    inputs["questions"][:, 1] = inputs["questions"][:, 0]  # the same question twice about one image
    np.testing.assert_allclose(np.asarray(model(inputs))[:, 0], np.asarray(model(inputs))[:, 1], rtol=1e-5, atol=1e-6)


def test_the_image_matters_unless_zeroed():
    inputs = _inputs()
    other = dict(inputs, images=inputs["images"][::-1].copy())
    seeing, blind = _model(), _model(use_image=False)
    assert not np.allclose(seeing(inputs)[0], seeing(other)[0], atol=1e-6)
    np.testing.assert_allclose(blind(inputs)[0], blind(other)[0], rtol=1e-6, atol=1e-6)


def test_unknown_fusion_is_refused():
    with pytest.raises(ValueError, match="fusion"):
        VQAHead(5, fusion="sum")


@pytest.mark.parametrize("options", [{}, {"attention": True, "fusion": "concat"}])
def test_save_and_load_give_identical_outputs(tmp_path, options):
    model = _model(**options)
    inputs = _inputs()
    path = tmp_path / "vqa.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False, safe_mode=True)
    assert isinstance(loaded, VQAModel)
    np.testing.assert_array_equal(np.asarray(model(inputs)), np.asarray(loaded(inputs)))
    assert loaded.head.get_config() == model.head.get_config()
    assert loaded.question_encoder.get_config() == model.question_encoder.get_config()


def test_gradients_reach_encoder_question_encoder_and_head():
    model = _model()
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
    )
    inputs = _inputs()
    targets = np.random.default_rng(1).integers(1, 7, (3, 4)).astype(np.int32)
    before = {v.path: np.array(v) for v in model.trainable_variables}
    model.fit(inputs, targets, epochs=1, batch_size=3, verbose=0)
    after = {v.path: np.array(v) for v in model.trainable_variables}
    moved = [path for path in before if not np.allclose(before[path], after[path])]
    for part in ("small_cnn", "question_encoder", "embedding", "classifier", "question_projection", "image_projection"):
        assert any(part in path for path in moved), (part, moved)
