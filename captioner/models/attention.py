"""`SoftAttention`: additive (Bahdanau) attention over the encoder's feature grid.

Follows Xu et al. 2015, "Show, Attend and Tell" (soft attention, section 4.2) with the score of Bahdanau
et al. 2015: e_ti = v^T tanh(W_enc a_i + W_dec h_t), alpha_t = softmax(e_t), z_t = sum_i alpha_ti a_i.
The projection of the grid (W_enc a_i) does not depend on t, so it is computed once per image.
"""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="captioner")
class SoftAttention(layers.Layer):
    """Soft attention of a hidden state over a grid of features.

    Args:
        attention_dim: int. Width of the additive scoring layer. Defaults to 128.

    Call:
        features: (batch, num_pixels, encoder_dim) grid.
        projected: (batch, num_pixels, attention_dim), from `project(features)`.
        hidden: (batch, hidden_dim) decoder state.
        returns context (batch, encoder_dim) and weights alpha (batch, num_pixels), summing to 1 over pixels.
    """

    def __init__(self, attention_dim: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.attention_dim = int(attention_dim)
        self.encoder_projection = layers.Dense(self.attention_dim, name="encoder_projection")
        self.decoder_projection = layers.Dense(self.attention_dim, name="decoder_projection")
        self.score = layers.Dense(1, name="score")

    def build(self, features_shape, projected_shape=None, hidden_shape=None):
        if self.built:
            return
        # `project` may have run (and built its layer) before the first call.
        for layer, shape in (
            (self.encoder_projection, features_shape),
            (self.decoder_projection, hidden_shape),
            (self.score, (None, None, self.attention_dim)),
        ):
            if shape is not None and not layer.built:
                layer.build(shape)
        self.built = True

    def project(self, features):
        """W_enc a_i for every pixel: (batch, num_pixels, attention_dim)."""
        return self.encoder_projection(features)

    def call(self, features, projected, hidden):
        query = self.decoder_projection(hidden)[:, None, :]  # (batch, 1, attention_dim)
        energy = self.score(ops.tanh(projected + query))[..., 0]  # (batch, num_pixels)
        alpha = ops.softmax(energy, axis=-1)  # (batch, num_pixels)
        # A batched matrix product, not sum(features * alpha): no (batch, num_pixels, encoder_dim) temporary per
        # word, which for a 7x7x1280 backbone grid was most of the training memory (BENCHMARKS.md).
        context = ops.matmul(alpha[:, None, :], features)[:, 0, :]  # (batch, encoder_dim)
        return context, alpha

    def get_config(self):
        config = super().get_config()
        config.update(attention_dim=self.attention_dim)
        return config
