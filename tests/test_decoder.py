import keras
import numpy as np
import pytest

from captioner.errors import CaptionerError
from captioner.models.attention import SoftAttention
from captioner.models.decoder import LSTMDecoder, RNNDecoder

pytestmark = pytest.mark.backends  # also run under KERAS_BACKEND=jax by `make test`

RNG = np.random.default_rng(0)
TOKENS = RNG.integers(1, 20, (3, 6)).astype(np.int32)
POOLED = RNG.normal(size=(3, 10)).astype(np.float32)
GRID = RNG.normal(size=(3, 9, 12)).astype(np.float32)


def _decoder(**kwargs):
    decoder = RNNDecoder(vocab_size=20, embedding_dim=8, hidden_dim=16, dropout_rate=0.0, **kwargs)
    decoder(TOKENS, POOLED, GRID)
    return decoder


VARIANTS = [
    {"cell": "lstm", "num_layers": 1},
    {"cell": "gru", "num_layers": 1},
    {"cell": "lstm", "num_layers": 2},
    {"cell": "gru", "num_layers": 3},
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: f"{v['cell']}x{v['num_layers']}")
@pytest.mark.parametrize("attention_dim", [None, 7])
def test_stepping_reproduces_teacher_forced_logits(attention_dim, variant):
    """Generation's one-step path and training's fused (or scanned) path are the same network, for every cell
    and depth: the state is opaque to both."""
    decoder = _decoder(attention_dim=attention_dim, **variant)
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
    np.testing.assert_allclose(
        np.asarray(context), np.einsum("bl,bld->bd", np.asarray(alpha), GRID), rtol=1e-4, atol=1e-5
    )


def test_doubly_stochastic_penalty_only_in_training():
    decoder = _decoder(attention_dim=7, attention_regularization=2.0)
    decoder(TOKENS, POOLED, GRID, training=False)
    assert not decoder.losses
    decoder(TOKENS, POOLED, GRID, training=True)
    (penalty,) = decoder.losses
    assert float(penalty) > 0


def test_state_from_the_grid_mean_ignores_the_pooled_vector():
    decoder = _decoder(attention_dim=7, state_init="grid_mean")
    h_a, _ = decoder.initial_state(POOLED, GRID)
    h_b, _ = decoder.initial_state(POOLED * 5, GRID)
    assert decoder.state_count == 2
    np.testing.assert_allclose(np.asarray(h_a), np.asarray(h_b))


@pytest.mark.parametrize("attention_dim", [None, 7])
def test_config_round_trip(attention_dim):
    decoder = RNNDecoder(
        vocab_size=20,
        embedding_dim=8,
        hidden_dim=16,
        dropout_rate=0.3,
        attention_dim=attention_dim,
        cell="gru",
        num_layers=2,
    )
    assert RNNDecoder.from_config(decoder.get_config()).get_config() == decoder.get_config()
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


def test_every_layer_starts_from_the_image():
    decoder = _decoder(cell="lstm", num_layers=3)
    state = decoder.initial_state(POOLED, GRID)
    assert len(state) == decoder.state_count == 6 and all(tuple(s.shape) == (3, 16) for s in state)
    other = decoder.initial_state(POOLED[::-1], GRID)
    assert all(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(state, other))  # each depends on the image
    assert len(_decoder(cell="gru", num_layers=2).initial_state(POOLED, GRID)) == 2


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"num_layers": 0}, "num_layers must be between 1 and 4 \\(got 0\\)"),
        ({"num_layers": 9}, "num_layers must be between 1 and 4 \\(got 9\\)"),
        ({"cell": "transformer"}, "unknown cell 'transformer'; choose lstm or gru"),
    ],
)
def test_impossible_decoders_are_one_line(settings, message):
    with pytest.raises(CaptionerError, match=message):
        RNNDecoder(vocab_size=20, **settings)


def test_a_decoder_saved_under_the_old_name_loads_with_its_weights(tmp_path):
    """Runs saved before cells were a setting name their decoder LSTMDecoder, with no cell or num_layers in its
    config, and file its weights under lstm, init_h and init_c: such a file loads, weights and all."""
    old = LSTMDecoder(vocab_size=20, embedding_dim=8, hidden_dim=16, dropout_rate=0.0, attention_dim=7, name="decoder")
    expected = np.asarray(old(TOKENS, POOLED, GRID))
    config = old.get_config()
    del config["cell"], config["num_layers"]  # what an old file's config holds
    restored = LSTMDecoder.from_config(config)
    restored(TOKENS, POOLED, GRID)
    _Holder(old).save_weights(tmp_path / "old.weights.h5")
    _Holder(restored).load_weights(tmp_path / "old.weights.h5")
    np.testing.assert_allclose(np.asarray(restored(TOKENS, POOLED, GRID)), expected, rtol=1e-5)
    assert restored.cell == "lstm" and restored.num_layers == 1 and restored.lstm is restored._rnns[0]


class _Holder(keras.Model):
    """Files a decoder's weights as a caption model does (under its attribute names)."""

    def __init__(self, decoder, **kwargs):
        super().__init__(**kwargs)
        self.decoder = decoder
        self.built = True


@pytest.mark.parametrize("attention_dim", [None, 7])
def test_dropout_between_stacked_layers_trains_on_every_backend(attention_dim):
    """The masks between layers are drawn before the time loop (JAX forbids random state inside a scan): training
    differs call to call, inference does not."""
    decoder = RNNDecoder(
        vocab_size=20, embedding_dim=8, hidden_dim=16, dropout_rate=0.5, attention_dim=attention_dim, num_layers=2
    )
    first = np.asarray(decoder(TOKENS, POOLED, GRID, training=True))
    assert not np.allclose(first, np.asarray(decoder(TOKENS, POOLED, GRID, training=True)))
    np.testing.assert_allclose(np.asarray(decoder(TOKENS, POOLED, GRID)), np.asarray(decoder(TOKENS, POOLED, GRID)))
