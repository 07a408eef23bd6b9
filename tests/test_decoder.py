import keras
import numpy as np
import pytest

from captioner.attention import SoftAttention
from captioner.decoder import LSTMDecoder

pytestmark = pytest.mark.backends  # also run under KERAS_BACKEND=jax by `make test`

RNG = np.random.default_rng(0)
TOKENS = RNG.integers(1, 20, (3, 6)).astype(np.int32)
POOLED = RNG.normal(size=(3, 10)).astype(np.float32)
GRID = RNG.normal(size=(3, 9, 12)).astype(np.float32)


def _decoder(**kwargs):
    decoder = LSTMDecoder(vocab_size=20, embedding_dim=8, hidden_dim=16, dropout_rate=0.0, **kwargs)
    decoder(TOKENS, POOLED, GRID)
    return decoder


@pytest.mark.parametrize("attention_dim", [None, 7])
def test_stepping_reproduces_teacher_forced_logits(attention_dim):
    decoder = _decoder(attention_dim=attention_dim)
    full = np.asarray(decoder(TOKENS, POOLED, GRID))  # (3, 6, 20)
    state, memory = decoder.initial_state(POOLED, GRID), decoder.memory(GRID)
    for t in range(TOKENS.shape[1]):
        logits, state, alpha = decoder.step(TOKENS[:, t], state, memory)
        np.testing.assert_allclose(np.asarray(logits), full[:, t], rtol=1e-4, atol=1e-5)
        assert alpha.shape == ((3, 9) if attention_dim else (3, 0))


def test_image_vector_changes_the_prediction():
    decoder = _decoder()
    pooled = RNG.normal(size=(2, 10)).astype(np.float32)
    logits = np.asarray(decoder(np.ones((2, 3), np.int32), pooled))
    assert not np.allclose(logits[0], logits[1])


def test_attention_weights_are_a_distribution_over_pixels():
    attention = SoftAttention(5)
    context, alpha = attention(GRID, attention.project(GRID), RNG.normal(size=(3, 16)).astype(np.float32))
    np.testing.assert_allclose(np.asarray(alpha).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(context), np.einsum("bl,bld->bd", np.asarray(alpha), GRID), rtol=1e-4, atol=1e-5)


def test_doubly_stochastic_penalty_only_in_training():
    decoder = _decoder(attention_dim=7, attention_regularization=2.0)
    decoder(TOKENS, POOLED, GRID, training=False)
    assert not decoder.losses
    decoder(TOKENS, POOLED, GRID, training=True)
    (penalty,) = decoder.losses
    assert float(penalty) > 0


def test_state_from_the_grid_mean_ignores_the_pooled_vector():
    decoder = _decoder(attention_dim=7, init_from="grid_mean")
    h_a, _ = decoder.initial_state(POOLED, GRID)
    h_b, _ = decoder.initial_state(POOLED * 5, GRID)
    np.testing.assert_allclose(np.asarray(h_a), np.asarray(h_b))


@pytest.mark.parametrize("attention_dim", [None, 7])
def test_config_round_trip(attention_dim):
    decoder = LSTMDecoder(vocab_size=20, embedding_dim=8, hidden_dim=16, dropout_rate=0.3, attention_dim=attention_dim)
    assert LSTMDecoder.from_config(decoder.get_config()).get_config() == decoder.get_config()
    attention = SoftAttention(5)
    assert SoftAttention.from_config(attention.get_config()).get_config() == attention.get_config()


@pytest.mark.parametrize("attention_dim", [None, 7])
def test_captions_of_one_image_share_its_state_and_memory(attention_dim):
    """Per-image work done once and repeated gives what repeating the image for every caption gives."""
    decoder = _decoder(attention_dim=attention_dim)
    tokens = RNG.integers(1, 20, (6, 5)).astype(np.int32)  # two captions for each of 3 images
    shared = np.asarray(decoder(tokens, POOLED, GRID, captions_per_image=2))
    repeated = np.asarray(decoder(tokens, np.repeat(POOLED, 2, axis=0), np.repeat(GRID, 2, axis=0)))
    np.testing.assert_allclose(shared, repeated, rtol=1e-5, atol=1e-6)
