"""`LSTMDecoder`: the Show-and-Tell language model (Vinyals et al. 2015, "Show and Tell").

The pooled image vector, layer-normalised and then through two dense layers, initialises the LSTM state
(h0, c0). The normalisation matters: pooled CNN features have arbitrary scale (a from-scratch CNN's grew to
a mean of ~30 here), the tanh of the state projections saturates, every image gets the same (h0, c0), and
the decoder can only learn the caption prior - the classic "same caption for every image" collapse. Training runs the
whole caption with teacher forcing (`call`); generation calls `step` once per word. Both paths share one
`LSTMCell`, so there is a single set of weights.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="captioner")
class LSTMDecoder(layers.Layer):
    """Word-level LSTM decoder conditioned on an image vector through its initial state.

    Args:
        vocab_size: int. Output classes, `<pad>` included.
        embedding_dim: int. Word-embedding width. Defaults to 128.
        hidden_dim: int. LSTM units. Defaults to 256.
        dropout_rate: float. Dropout on the LSTM output before the vocabulary projection. Defaults to 0.2.

    Call:
        tokens: (batch, steps) int ids, `<start> w1 ... wn` (padded with 0).
        pooled: (batch, pooled_dim) image vectors.
        returns logits (batch, steps, vocab_size) predicting `w1 ... wn <end>`.
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 128, hidden_dim: int = 256, dropout_rate: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.embedding_dim = int(embedding_dim)
        self.hidden_dim = int(hidden_dim)
        self.dropout_rate = float(dropout_rate)
        self.embedding = layers.Embedding(self.vocab_size, self.embedding_dim, name="embedding")
        self.pooled_norm = layers.LayerNormalization(name="pooled_norm")
        self.init_h = layers.Dense(self.hidden_dim, name="init_h")
        self.init_c = layers.Dense(self.hidden_dim, name="init_c")
        self.lstm = layers.LSTM(self.hidden_dim, return_sequences=True, name="lstm")
        self.dropout = layers.Dropout(self.dropout_rate)
        self.output_projection = layers.Dense(self.vocab_size, name="output_projection")

    def build(self, tokens_shape, pooled_shape=None):
        if self.built:  # Keras may build nested layers from their own build configs first
            return
        pooled_dim = pooled_shape[-1] if pooled_shape is not None else None
        self.embedding.build(tokens_shape)
        if pooled_dim is not None:
            self.pooled_norm.build((None, pooled_dim))
            self.init_h.build((None, pooled_dim))
            self.init_c.build((None, pooled_dim))
        self.lstm.build((None, None, self.embedding_dim))
        self.output_projection.build((None, self.hidden_dim))
        self.built = True

    def initial_state(self, pooled):
        """(h0, c0), each (batch, hidden_dim), from pooled image vectors (batch, pooled_dim)."""
        normalised = self.pooled_norm(pooled)  # (batch, pooled_dim)
        return self.init_h(normalised), self.init_c(normalised)

    def call(self, tokens, pooled, training=None):
        h0, c0 = self.initial_state(pooled)  # (batch, hidden_dim) each
        embedded = self.embedding(tokens)  # (batch, steps, embedding_dim)
        outputs = self.lstm(embedded, initial_state=[h0, c0], training=training)  # (batch, steps, hidden_dim)
        outputs = self.dropout(outputs, training=training)
        return self.output_projection(outputs)  # (batch, steps, vocab_size)

    def step(self, tokens, state):
        """One word for every sequence in the batch.

        Args:
            tokens: (batch,) int ids of the previous word.
            state: tuple (h, c), each (batch, hidden_dim).

        Returns:
            logits (batch, vocab_size) and the new (h, c).
        """
        embedded = self.embedding(tokens)  # (batch, embedding_dim)
        output, (h, c) = self.lstm.cell(embedded, list(state))  # (batch, hidden_dim)
        return self.output_projection(output), (h, c)  # (batch, vocab_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            embedding_dim=self.embedding_dim,
            hidden_dim=self.hidden_dim,
            dropout_rate=self.dropout_rate,
        )
        return config
