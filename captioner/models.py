"""`CaptionModel`: one `ImageEncoder` feeding one `LSTMDecoder` (Show-and-Tell or Show-Attend-Tell).

Each image is encoded once per step and all of its reference captions are decoded against that one
encoding: images (batch, H, W, 3) and tokens (batch, captions_per_image, steps) go in, logits
(batch, captions_per_image, steps, vocab) come out.
"""

from __future__ import annotations

import keras
from keras import ops

from captioner.decoder import LSTMDecoder
from captioner.encoder import ImageEncoder


@keras.saving.register_keras_serializable(package="captioner")
class CaptionModel(keras.Model):
    """Encoder-decoder captioner trained with teacher forcing.

    Args:
        encoder: ImageEncoder. The CNN.
        decoder: LSTMDecoder. The language model.

    Call:
        inputs: dict with "images" (batch, size, size, 3) 0-255 and "tokens" (batch, captions, steps) int ids.
        returns logits (batch, captions, steps, vocab_size).
    """

    def __init__(self, encoder: ImageEncoder, decoder: LSTMDecoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder

    def build(self, input_shape=None):
        if self.built:  # Keras may build nested layers from their own build configs first
            return
        size = self.encoder.image_size
        self.encoder.build((None, size, size, 3))
        grid_shape = (None, self.encoder.num_pixels, self.encoder.encoder_dim)
        self.decoder.build((None, None), (None, self.encoder.pooled_dim), grid_shape)
        self.built = True

    def get_build_config(self):
        return {}  # the sub-layers' configs fix every shape

    def build_from_config(self, config):
        self.build()

    def call(self, inputs, training=None):
        images, tokens = inputs["images"], inputs["tokens"]
        grid, pooled = self.encoder(images, training=training)  # (batch, num_pixels, encoder_dim), (batch, pooled_dim)
        captions, steps = tokens.shape[1], tokens.shape[2]
        flat_tokens = ops.reshape(tokens, (-1, steps))  # (batch * captions, steps)
        flat_pooled = ops.repeat(pooled, captions, axis=0)  # (batch * captions, pooled_dim)
        flat_grid = ops.repeat(grid, captions, axis=0)  # (batch * captions, num_pixels, encoder_dim)
        logits = self.decoder(flat_tokens, flat_pooled, flat_grid, training=training)  # (batch * captions, steps, vocab)
        return ops.reshape(logits, (-1, captions, steps, self.decoder.vocab_size))  # (batch, captions, steps, vocab)

    def encode(self, images):
        """Encoder outputs for inference: grid (batch, num_pixels, encoder_dim), pooled (batch, pooled_dim)."""
        return self.encoder(images, training=False)

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            decoder=keras.saving.serialize_keras_object(self.decoder),
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        encoder = keras.saving.deserialize_keras_object(config.pop("encoder"))
        decoder = keras.saving.deserialize_keras_object(config.pop("decoder"))
        return cls(encoder=encoder, decoder=decoder, **config)


def build_caption_model(model_config, vocab_size: int, image_size: int) -> CaptionModel:
    """A built CaptionModel from a ModelConfig (captioner.config)."""
    attention = model_config.decoder == "attention"
    init_from = model_config.init_from or ("grid_mean" if attention else "pooled")
    # A decoder that starts from the grid mean never reads the pooled vector: skip the flatten projection
    # (2M unused weights that would get no gradient).
    pooling = model_config.encoder_pooling or ("avg" if init_from == "grid_mean" else None)
    encoder = ImageEncoder(
        encoder=model_config.encoder,
        image_size=image_size,
        filters=model_config.encoder_filters,
        feature_dim=model_config.feature_dim,
        pooling=pooling,
        weights=model_config.encoder_weights,
        encoder_trainable=model_config.encoder_trainable,
        norm=model_config.encoder_norm,
        name="image_encoder",
    )
    decoder = LSTMDecoder(
        vocab_size=vocab_size,
        embedding_dim=model_config.embedding_dim,
        hidden_dim=model_config.hidden_dim,
        dropout_rate=model_config.dropout_rate,
        attention_dim=model_config.attention_dim if attention else None,
        attention_regularization=model_config.attention_regularization,
        init_from=init_from,
        name="decoder",
    )
    model = CaptionModel(encoder, decoder, name="caption_model")
    model.build()
    return model
