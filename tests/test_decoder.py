import numpy as np

from captioner.decoder import LSTMDecoder


def test_stepping_reproduces_teacher_forced_logits():
    decoder = LSTMDecoder(vocab_size=20, embedding_dim=8, hidden_dim=16, dropout_rate=0.0)
    tokens = np.random.default_rng(0).integers(1, 20, (3, 6)).astype(np.int32)
    pooled = np.random.default_rng(1).normal(size=(3, 10)).astype(np.float32)
    full = np.asarray(decoder(tokens, pooled))  # (3, 6, 20)
    state = decoder.initial_state(pooled)
    for t in range(tokens.shape[1]):
        logits, state = decoder.step(tokens[:, t], state)
        np.testing.assert_allclose(np.asarray(logits), full[:, t], rtol=1e-4, atol=1e-5)


def test_image_vector_changes_the_prediction():
    decoder = LSTMDecoder(vocab_size=20, embedding_dim=8, hidden_dim=16)
    tokens = np.ones((2, 3), np.int32)
    pooled = np.random.default_rng(2).normal(size=(2, 10)).astype(np.float32)
    logits = np.asarray(decoder(tokens, pooled))
    assert not np.allclose(logits[0], logits[1])


def test_config_round_trip():
    decoder = LSTMDecoder(vocab_size=20, embedding_dim=8, hidden_dim=16, dropout_rate=0.3)
    assert LSTMDecoder.from_config(decoder.get_config()).get_config() == decoder.get_config()
