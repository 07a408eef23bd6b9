"""`QuestionEncoder` and `VQAHead`: the VQA half of the product.

Follows Antol et al. 2015, "VQA: Visual Question Answering", "LSTM Q + norm I": an LSTM reads the question,
the image vector is L2-normalised, both are projected to one width with tanh, fused by element-wise product
(concatenation as an option) and classified over the most frequent answers by a small MLP. With
`attention=True` the question first attends over the image grid (one hop of Yang et al. 2016, "Stacked
Attention Networks"), and the attended context replaces the pooled vector.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from captioner.distribute import sync_batch_norm
from captioner.models.attention import SoftAttention
from captioner.precision import rnn_use_cudnn


@keras.saving.register_keras_serializable(package="captioner")
class QuestionEncoder(layers.Layer):
    """Word embedding + LSTM; the last hidden state encodes the question.

    Args:
        vocab_size: int. Question vocabulary size (id 0 is padding and is masked).
        embedding_dim: int. Word-embedding width. Defaults to 128.
        hidden_dim: int. LSTM units. Defaults to 256.

    Call:
        tokens: (batch, steps) int ids, zero-padded.
        returns (batch, hidden_dim); an all-padding row gives zeros.
    """

    def __init__(self, vocab_size: int, embedding_dim: int = 128, hidden_dim: int = 256, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size = int(vocab_size)
        self.embedding_dim = int(embedding_dim)
        self.hidden_dim = int(hidden_dim)
        self.embedding = layers.Embedding(self.vocab_size, self.embedding_dim, mask_zero=True, name="embedding")
        self.lstm = layers.LSTM(self.hidden_dim, name="lstm", use_cudnn=rnn_use_cudnn(self.compute_dtype))

    def build(self, tokens_shape):
        if self.built:
            return
        self.embedding.build(tokens_shape)
        self.lstm.build((tokens_shape[0], tokens_shape[1], self.embedding_dim))
        self.built = True

    def call(self, tokens, training=None):
        embedded = self.embedding(tokens)  # (batch, steps, embedding_dim)
        mask = ops.not_equal(tokens, 0)  # (batch, steps)
        return self.lstm(embedded, mask=mask, training=training)  # (batch, hidden_dim)

    def compute_output_shape(self, tokens_shape):
        return (tokens_shape[0], self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update(vocab_size=self.vocab_size, embedding_dim=self.embedding_dim, hidden_dim=self.hidden_dim)
        return config


FUSIONS = ("multiply", "concat")
IMAGE_NORMS = ("batch", "l2", "layer")


@keras.saving.register_keras_serializable(package="captioner")
class VQAHead(layers.Layer):
    """Fuse an image encoding with a question encoding and score every answer.

    Args:
        num_answers: int. Classes, `<other>` (id 0) included.
        fusion: str. "multiply" (element-wise product) or "concat". Defaults to "multiply".
        fusion_dim: int. Width both inputs are projected to. Defaults to 256.
        mlp_dim: int. Hidden width of the classifier. Defaults to 256.
        dropout_rate: float. Dropout on the fused vector and the hidden layer. Defaults to 0.3.
        attention: bool. The question attends over the grid instead of using the pooled vector. Defaults to False.
        attention_dim: int. Width of that attention. Defaults to 128.
        image_norm: str. "batch" (BatchNormalization: removes what every image's features share, which for a
            CNN trained from scratch is ~98% of the vector at the start, docs/vqa.md) or "l2" (Antol et al.'s
            "norm I") or "layer" (LayerNormalization). Defaults to "batch".
        image_hidden_dim: int. A ReLU layer of this width on the normalised image vector before its tanh projection
            (0: none). Defaults to 0.

    Call:
        question: (batch, question_dim); pooled: (batch, pooled_dim); grid: (batch, num_pixels, encoder_dim).
        returns logits (batch, num_answers) and the attention weights (batch, num_pixels) (uniform without attention).
    """

    def __init__(
        self,
        num_answers: int,
        fusion: str = "multiply",
        fusion_dim: int = 256,
        mlp_dim: int = 256,
        dropout_rate: float = 0.3,
        attention: bool = False,
        attention_dim: int = 128,
        image_norm: str = "batch",
        image_hidden_dim: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if fusion not in FUSIONS:
            raise ValueError(f"unknown fusion '{fusion}'; use one of {FUSIONS}")
        if image_norm not in IMAGE_NORMS:
            raise ValueError(f"unknown image_norm '{image_norm}'; use one of {IMAGE_NORMS}")
        self.image_norm = image_norm
        self.num_answers = int(num_answers)
        self.fusion = fusion
        self.fusion_dim = int(fusion_dim)
        self.mlp_dim = int(mlp_dim)
        self.dropout_rate = float(dropout_rate)
        self.attention = bool(attention)
        self.attention_dim = int(attention_dim)
        self.image_hidden_dim = int(image_hidden_dim)
        self.image_hidden = (
            layers.Dense(self.image_hidden_dim, activation="relu", name="image_hidden")
            if self.image_hidden_dim
            else None
        )
        self.image_projection = layers.Dense(self.fusion_dim, activation="tanh", name="image_projection")
        self.question_projection = layers.Dense(self.fusion_dim, activation="tanh", name="question_projection")
        self.hidden = layers.Dense(self.mlp_dim, activation="relu", name="hidden")
        self.classifier = layers.Dense(self.num_answers, name="classifier")
        self.dropout = layers.Dropout(self.dropout_rate)
        self.soft_attention = SoftAttention(self.attention_dim, name="attention") if self.attention else None
        norms = {
            "batch": lambda: layers.BatchNormalization(momentum=0.9, synchronized=sync_batch_norm(), name="image_norm"),
            "layer": lambda: layers.LayerNormalization(name="image_norm"),
        }
        self.image_batch_norm = norms[image_norm]() if image_norm in norms else None

    def build(self, question_shape, pooled_shape, grid_shape):
        if self.built:
            return
        image_dim = grid_shape[-1] if self.attention else pooled_shape[-1]
        if self.image_batch_norm is not None:
            self.image_batch_norm.build((None, image_dim))
        if self.image_hidden is not None:
            self.image_hidden.build((None, image_dim))
            image_dim = self.image_hidden_dim
        self.image_projection.build((None, image_dim))
        self.question_projection.build(question_shape)
        fused_dim = self.fusion_dim * (2 if self.fusion == "concat" else 1)
        self.hidden.build((None, fused_dim))
        self.classifier.build((None, self.mlp_dim))
        if self.soft_attention is not None:
            self.soft_attention.build(grid_shape, None, (None, self.fusion_dim))
        self.built = True

    def call(self, question, pooled, grid, training=None):
        query = self.question_projection(question)  # (batch, fusion_dim)
        if self.soft_attention is not None:
            # (batch, encoder_dim), (batch, num_pixels)
            image, alpha = self.soft_attention(grid, self.soft_attention.project(grid), query)
        else:
            image = pooled  # (batch, pooled_dim)
            alpha = ops.ones_like(grid[..., 0]) / ops.cast(ops.shape(grid)[1], grid.dtype)  # (batch, num_pixels)
        image = self._image_vector(image, training)  # (batch, fusion_dim)
        # (batch, fused_dim)
        fused = query * image if self.fusion == "multiply" else ops.concatenate([query, image], axis=-1)
        return self._classify(fused, training), alpha  # (batch, num_answers), (batch, num_pixels)

    def _image_vector(self, image, training=None):
        """Normalised, through the hidden ReLU layer if any, projected: (batch, image_dim) -> (batch, fusion_dim)."""
        if self.image_batch_norm is not None:
            image = self.image_batch_norm(image, training=training)  # (batch, image_dim)
        else:
            image = image / (ops.norm(image, axis=-1, keepdims=True) + 1e-6)  # (batch, image_dim)
        if self.image_hidden is not None:
            image = self.dropout(self.image_hidden(image), training=training)  # (batch, image_hidden_dim)
        return self.image_projection(image)  # (batch, fusion_dim)

    def _classify(self, fused, training=None):
        hidden = self.hidden(self.dropout(fused, training=training))  # (batch, mlp_dim)
        return self.classifier(self.dropout(hidden, training=training))  # (batch, num_answers)

    def question_only(self, question, training=None):
        """Logits from the question alone: the image factor of the fusion is 1 (multiply) or 0 (concat), so the
        blind model is the same classifier with the image taken out, not a product stuck at zero."""
        query = self.question_projection(question)  # (batch, fusion_dim)
        # (batch, fused_dim)
        fused = query if self.fusion == "multiply" else ops.concatenate([query, ops.zeros_like(query)], axis=-1)
        return self._classify(fused, training)  # (batch, num_answers)

    def image_only(self, pooled, training=None):
        """Logits from the pooled image vector alone (the question factor is 1 or 0 as in `question_only`): the
        "I" baseline of Antol et al., which can only learn which photos tend to get which answer."""
        image = self._image_vector(pooled, training)  # (batch, fusion_dim)
        # (batch, fused_dim)
        fused = image if self.fusion == "multiply" else ops.concatenate([ops.zeros_like(image), image], axis=-1)
        return self._classify(fused, training)  # (batch, num_answers)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_answers=self.num_answers,
            fusion=self.fusion,
            fusion_dim=self.fusion_dim,
            mlp_dim=self.mlp_dim,
            dropout_rate=self.dropout_rate,
            attention=self.attention,
            attention_dim=self.attention_dim,
            image_norm=self.image_norm,
            image_hidden_dim=self.image_hidden_dim,
        )
        return config
