"""`LSTMDecoder`: Show-and-Tell (Vinyals et al. 2015), or Show-Attend-Tell with soft attention (Xu et al. 2015).

The image vector, layer-normalised and projected linearly, initialises the LSTM state (h0, c0). Both
choices matter: pooled CNN features have arbitrary scale (a from-scratch CNN's grew to a mean of ~30 here);
with tanh projections the optimiser learned the caption prior by saturating them, every image got the same
(h0, c0), and no gradient reached the image again - the classic "same caption for every image" collapse
(BENCHMARKS.md has the measurements). sgrvinod's Show-Attend-Tell also projects linearly.

Without attention, the whole caption runs through one fused `LSTM` (teacher forcing). With attention
(`attention_dim` set), every step attends over the grid with the previous hidden state, gates the context
with sigmoid(f_beta(h)), and feeds [word embedding, context] to the same LSTM cell; the doubly stochastic
penalty lambda * mean_i (1 - sum_t alpha_ti)^2 is added to the loss in training. `step` serves generation
for both, so decoding is written once.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from captioner.attention import SoftAttention
from captioner.precision import lstm_use_cudnn


@keras.saving.register_keras_serializable(package="captioner")
class LSTMDecoder(layers.Layer):
    """Word-level LSTM decoder conditioned on an image.

    Args:
        vocab_size: int. Output classes, `<pad>` included.
        embedding_dim: int. Word-embedding width. Defaults to 128.
        hidden_dim: int. LSTM units. Defaults to 256.
        dropout_rate: float. Dropout on the LSTM output before the vocabulary projection. Defaults to 0.2.
        attention_dim: int | None. Soft-attention width; None is Show-and-Tell. Defaults to None.
        attention_regularization: float. lambda of the doubly stochastic penalty. Defaults to 1.0.
        init_from: str. "pooled" (the encoder's pooled vector) or "grid_mean" (the mean of the grid, as in
            Show-Attend-Tell). Defaults to "pooled".

    Call:
        tokens: (batch, steps) int ids, `<start> w1 ... wn` padded with 0.
        pooled: (images, pooled_dim) image vectors, images = batch / captions_per_image.
        grid: (images, num_pixels, encoder_dim) feature grid (used with attention or init_from="grid_mean").
        captions_per_image: int. Consecutive token rows that share one image. Defaults to 1.
        returns logits (batch, steps, vocab_size) predicting `w1 ... wn <end>`.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 128,
        hidden_dim: int = 256,
        dropout_rate: float = 0.2,
        attention_dim: int | None = None,
        attention_regularization: float = 1.0,
        init_from: str = "pooled",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if init_from not in ("pooled", "grid_mean"):
            raise ValueError(f"init_from must be 'pooled' or 'grid_mean', got '{init_from}'")
        self.vocab_size = int(vocab_size)
        self.embedding_dim = int(embedding_dim)
        self.hidden_dim = int(hidden_dim)
        self.dropout_rate = float(dropout_rate)
        self.attention_dim = None if attention_dim is None else int(attention_dim)
        self.attention_regularization = float(attention_regularization)
        self.init_from = init_from
        self.embedding = layers.Embedding(self.vocab_size, self.embedding_dim, name="embedding")
        self.pooled_norm = layers.LayerNormalization(name="pooled_norm")  # normalises the grid mean too
        self.init_h = layers.Dense(self.hidden_dim, name="init_h")
        self.init_c = layers.Dense(self.hidden_dim, name="init_c")
        self.lstm = layers.LSTM(self.hidden_dim, return_sequences=True, name="lstm", use_cudnn=lstm_use_cudnn(self.compute_dtype))
        self.dropout = layers.Dropout(self.dropout_rate)
        self.output_projection = layers.Dense(self.vocab_size, name="output_projection")
        if self.attention_dim is not None:
            self.attention = SoftAttention(self.attention_dim, name="attention")
            self.gate = None  # f_beta: built once the grid width is known

    @property
    def uses_attention(self) -> bool:
        return self.attention_dim is not None

    def build(self, tokens_shape, pooled_shape=None, grid_shape=None):
        if self.built:
            return
        self.embedding.build(tokens_shape)
        image_dim = grid_shape[-1] if self.init_from == "grid_mean" else pooled_shape[-1]
        self.pooled_norm.build((None, image_dim))
        self.init_h.build((None, image_dim))
        self.init_c.build((None, image_dim))
        lstm_input = self.embedding_dim
        if self.uses_attention:
            encoder_dim = grid_shape[-1]
            self.attention.build(grid_shape, None, (None, self.hidden_dim))
            self.gate = layers.Dense(encoder_dim, activation="sigmoid", name="gate")
            self.gate.build((None, self.hidden_dim))
            lstm_input += encoder_dim
        self.lstm.build((None, None, lstm_input))
        self.output_projection.build((None, self.hidden_dim))
        self.built = True

    def initial_state(self, pooled, grid=None):
        """(h0, c0), each (batch, hidden_dim), from the pooled vector or the mean of the grid."""
        image = ops.mean(grid, axis=1) if self.init_from == "grid_mean" else pooled  # (batch, image_dim)
        image = self.pooled_norm(image)
        return self.init_h(image), self.init_c(image)

    def memory(self, grid):
        """What `step` attends over: (grid, projected grid), computed once per image; () without attention."""
        if not self.uses_attention:
            return ()
        return grid, self.attention.project(grid)  # (batch, num_pixels, encoder_dim), (batch, num_pixels, attention_dim)

    def call(self, tokens, pooled, grid=None, training=None, captions_per_image=1):
        # What depends on the image alone (initial state, projected grid) is computed once per image, then
        # repeated for its captions: rows b*captions_per_image ... of `tokens` belong to image b.
        state = self.initial_state(pooled, grid)  # (images, hidden_dim) x 2
        memory = self.memory(grid)  # (images, num_pixels, encoder_dim), (images, num_pixels, attention_dim)
        if captions_per_image > 1:
            state, memory = keras.tree.map_structure(lambda x: ops.repeat(x, captions_per_image, axis=0), (state, memory))
        embedded = self.embedding(tokens)  # (batch, steps, embedding_dim)
        if not self.uses_attention:
            outputs = self.lstm(embedded, initial_state=list(state), training=training)  # (batch, steps, hidden_dim)
        else:
            def step(carry, word):  # one word for the whole batch: (h, c, alpha of the last word), (batch, embedding_dim)
                _, (h, c), alpha = self._attend_and_step(word, carry[:2], memory)
                carry = (h, c, ops.cast(alpha, carry[2].dtype))
                return carry, carry  # Keras's scan stacks outputs shaped as the carry: alpha rides along in it

            # A scan over time, not a Python loop unrolled into the graph: one step body to trace and differentiate.
            pixels = ops.zeros_like(memory[1][..., 0])  # (batch, num_pixels)
            _, (hiddens, _, alphas) = ops.scan(step, (*state, pixels), ops.moveaxis(embedded, 1, 0))  # (steps, batch, ...) each
            outputs = ops.moveaxis(hiddens, 0, 1)  # (batch, steps, hidden_dim); an LSTM cell's output is its h
            alphas = ops.moveaxis(alphas, 0, 1)  # (batch, steps, num_pixels)
            if training and self.attention_regularization > 0:
                mask = ops.cast(ops.not_equal(tokens, 0), "float32")[..., None]  # (batch, steps, 1)
                alphas = ops.cast(alphas, "float32")  # (batch, steps, num_pixels); the penalty in float32
                coverage = ops.sum(alphas * mask, axis=1)  # (batch, num_pixels)
                self.add_loss(self.attention_regularization * ops.mean(ops.square(1.0 - coverage)))
        outputs = self.dropout(outputs, training=training)
        return self.output_projection(outputs)  # (batch, steps, vocab_size)

    def _attend_and_step(self, embedded, state, memory):
        h, c = state
        features, projected = memory
        context, alpha = self.attention(features, projected, h)  # (batch, encoder_dim), (batch, num_pixels)
        context = self.gate(h) * context  # (batch, encoder_dim)
        output, (h, c) = self.lstm.cell(ops.concatenate([embedded, context], axis=-1), [h, c])  # (batch, hidden_dim)
        return output, (h, c), alpha

    def step(self, tokens, state, memory=()):
        """One word for every sequence in the batch.

        Args:
            tokens: (batch,) int ids of the previous word.
            state: tuple (h, c), each (batch, hidden_dim).
            memory: tuple from `memory(grid)`, rows aligned with `tokens`.

        Returns:
            logits (batch, vocab_size), the new (h, c), attention weights (batch, num_pixels) - (batch, 0)
            without attention.
        """
        embedded = self.embedding(tokens)  # (batch, embedding_dim)
        if self.uses_attention:
            output, state, alpha = self._attend_and_step(embedded, state, memory)
        else:
            output, state = self.lstm.cell(embedded, list(state))  # (batch, hidden_dim)
            state = tuple(state)
            alpha = ops.zeros((ops.shape(tokens)[0], 0))
        return self.output_projection(output), state, alpha  # (batch, vocab_size)

    def get_config(self):
        config = super().get_config()
        config.pop("dtype", None)  # the run's precision decides (captioner.precision), not the file
        config.update(
            vocab_size=self.vocab_size,
            embedding_dim=self.embedding_dim,
            hidden_dim=self.hidden_dim,
            dropout_rate=self.dropout_rate,
            attention_dim=self.attention_dim,
            attention_regularization=self.attention_regularization,
            init_from=self.init_from,
        )
        return config
