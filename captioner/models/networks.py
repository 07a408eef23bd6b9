"""`CaptionModel` and `VQAModel`: one `ImageEncoder` feeding an `RNNDecoder` or a question encoder + `VQAHead`.

Each image is encoded once per step and all of its reference captions (or questions) are decoded against
that one encoding: images (batch, H, W, 3) and tokens (batch, captions_per_image, steps) go in, logits
(batch, captions_per_image, steps, vocab) come out; for VQA, questions (batch, questions_per_image, steps)
go in and answer logits (batch, questions_per_image, num_answers) come out.
"""

from __future__ import annotations

import keras
from keras import ops

from captioner.errors import CaptionerError
from captioner.models.decoder import RNNDecoder
from captioner.models.encoder import BACKBONES, ImageEncoder
from captioner.models.vqa_head import QuestionEncoder, VQAHead
from captioner.precision import apply_precision


@keras.saving.register_keras_serializable(package="captioner")
class CaptionModel(keras.Model):
    """Encoder-decoder captioner trained with teacher forcing.

    Args:
        encoder: ImageEncoder. The CNN.
        decoder: RNNDecoder. The language model.

    Call:
        inputs: dict with "images" (batch, size, size, 3) 0-255, or "features" (batch, num_pixels, encoder_dim) from
            a FeatureCache of this (frozen) encoder, and "tokens" (batch, captions, steps) int ids.
        returns logits (batch, captions, steps, vocab_size).
    """

    def __init__(self, encoder: ImageEncoder, decoder: RNNDecoder, **kwargs):
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
        tokens = inputs["tokens"]
        if "features" in inputs:  # cached CNN output: only the pooling runs
            # (batch, num_pixels, encoder_dim), (batch, pooled_dim)
            grid, pooled = self.encoder.from_cached(inputs["features"])
        else:
            # (batch, num_pixels, encoder_dim), (batch, pooled_dim)
            grid, pooled = self.encoder(inputs["images"], training=training)
        captions, steps = tokens.shape[1], tokens.shape[2]
        flat_tokens = ops.reshape(tokens, (-1, steps))  # (batch * captions, steps)
        # (batch * captions, steps, vocab)
        logits = self.decoder(flat_tokens, pooled, grid, training=training, captions_per_image=captions)
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


def training_work(run_config) -> str:
    """What a run's training is, for `auto` precision and for the task's data path: "train_cached" (a caption decoder
    or a VQA head on the cached features of a frozen backbone) or "train_cnn" (pixels through a CNN: the small CNN, a
    fine-tuned backbone, or an encoder taken from a captioning run)."""
    model = run_config.model
    vqa = run_config.vqa
    if run_config.task == "vqa" and vqa.encoder_from:  # a captioning run's encoder (the small CNN, or fine-tuned)
        return "train_cnn"
    cached = model.encoder in BACKBONES and not encoder_is_trainable(model)
    return "train_cached" if cached else "train_cnn"


def encoder_is_trainable(model_config) -> bool:
    """`encoder_trainable` as configured; by default the small CNN trains and pretrained backbones stay frozen."""
    if model_config.encoder_trainable is None:
        return model_config.encoder == "small_cnn"
    return bool(model_config.encoder_trainable)


def build_image_encoder(
    model_config, image_size: int, pooling: str | None = None, precision: str | None = None
) -> ImageEncoder:
    """An ImageEncoder from a ModelConfig (captioner.config)."""
    encoder = ImageEncoder(
        encoder=model_config.encoder,
        image_size=image_size,
        filters=model_config.encoder_filters,
        feature_dim=model_config.feature_dim,
        pooling=model_config.encoder_pooling or pooling,
        weights=model_config.encoder_weights,
        encoder_trainable=encoder_is_trainable(model_config),
        norm=model_config.encoder_norm,
        input_scale=model_config.encoder_input,
        fine_tune_blocks=model_config.fine_tune_blocks,
        name="image_encoder",
    )
    return apply_precision(encoder, precision or model_config.precision)


def build_caption_model(model_config, vocab_size: int, image_size: int, precision: str | None = None) -> CaptionModel:
    """A built CaptionModel from a ModelConfig (captioner.config)."""
    attention = model_config.decoder == "attention"
    if model_config.attention == "hard" and not attention:
        raise CaptionerError(
            f"hard attention needs the attention decoder, not {model_config.decoder}: add --decoder attention"
        )
    state_init = model_config.state_init or ("grid_mean" if attention else "pooled")
    # A decoder that starts from the grid mean never reads the pooled vector: skip the flatten projection
    # (2M unused weights that would get no gradient).
    encoder = build_image_encoder(model_config, image_size, "avg" if state_init == "grid_mean" else None)
    decoder = RNNDecoder(
        vocab_size=vocab_size,
        embedding_dim=model_config.embedding_dim,
        hidden_dim=model_config.hidden_dim,
        dropout_rate=model_config.dropout_rate,
        attention_dim=model_config.attention_dim if attention else None,
        attention_regularization=model_config.attention_regularization,
        state_init=state_init,
        cell=model_config.cell,
        num_layers=model_config.num_layers,
        attention=model_config.attention,
        entropy_weight=model_config.hard_entropy_weight,
        reinforce_weight=model_config.hard_reinforce_weight,
        hard_expected_share=model_config.hard_expected_share,
        name="decoder",
    )
    model = CaptionModel(encoder, decoder, name="caption_model")
    model.build()
    return apply_precision(model, precision or model_config.precision)


@keras.saving.register_keras_serializable(package="captioner")
class VQAModel(keras.Model):
    """Image encoder + question encoder + VQA head, classifying over an answer vocabulary.

    Args:
        encoder: ImageEncoder. The CNN (possibly taken from a captioning run and frozen).
        question_encoder: QuestionEncoder.
        head: VQAHead.
        use_image: bool. False: the image takes no part (the question-only "LSTM Q" ablation). Defaults to True.
        use_question: bool. False: the question takes no part (the image-only "I" ablation). Defaults to True.

    Call:
        inputs: dict with "images" (batch, size, size, 3) 0-255, or "features" (batch, num_pixels, encoder_dim) from a
            FeatureCache of this (frozen) encoder, and "questions" (batch, questions, steps) int ids.
        returns logits (batch, questions, num_answers).
    """

    def __init__(
        self,
        encoder: ImageEncoder,
        question_encoder: QuestionEncoder,
        head: VQAHead,
        use_image: bool = True,
        use_question: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not (use_image or use_question):
            raise ValueError("a VQA model needs the image, the question or both")
        self.encoder = encoder
        self.question_encoder = question_encoder
        self.head = head
        self.use_image = bool(use_image)
        self.use_question = bool(use_question)

    def build(self, input_shape=None):
        if self.built:
            return
        size = self.encoder.image_size
        self.encoder.build((None, size, size, 3))
        self.question_encoder.build((None, None))
        grid_shape = (None, self.encoder.num_pixels, self.encoder.encoder_dim)
        self.head.build((None, self.question_encoder.hidden_dim), (None, self.encoder.pooled_dim), grid_shape)
        self.built = True

    def get_build_config(self):
        return {}

    def build_from_config(self, config):
        self.build()

    def call(self, inputs, training=None):
        cached = "features" in inputs
        logits, _ = self.answer(
            inputs["features"] if cached else inputs["images"], inputs["questions"], training=training, cached=cached
        )
        return logits

    def answer(self, images, questions, training=None, cached=False):
        """Logits (batch, questions, num_answers) and attention (batch, questions, num_pixels); with `cached`,
        `images` are the CNN's grids from a feature cache (batch, num_pixels, encoder_dim)."""
        count, steps = ops.shape(questions)[1], questions.shape[2]  # questions per image may vary between calls
        flat_questions = ops.reshape(questions, (-1, steps))  # (batch * questions, steps)
        if not self.use_image:  # the blind ablation: the CNN never runs, the head sees the question alone
            encoded = self.question_encoder(flat_questions, training=training)  # (batch * questions, question_dim)
            logits = self.head.question_only(encoded, training=training)  # (batch * questions, num_answers)
            alpha = ops.zeros((ops.shape(encoded)[0], self.encoder.num_pixels))  # (batch * questions, num_pixels)
            return ops.reshape(logits, (-1, count, self.head.num_answers)), ops.reshape(
                alpha, (-1, count, self.encoder.num_pixels)
            )
        # (batch, num_pixels, encoder_dim), (batch, pooled_dim)
        grid, pooled = self.encoder.from_cached(images) if cached else self.encoder(images, training=training)
        flat_pooled = ops.repeat(pooled, count, axis=0)  # (batch * questions, pooled_dim)
        if not self.use_question:  # the image-only ablation: the same answer to every question about a photo
            logits = self.head.image_only(flat_pooled, training=training)  # (batch * questions, num_answers)
            # (batch * questions, num_pixels)
            alpha = ops.ones((ops.shape(flat_pooled)[0], self.encoder.num_pixels)) / self.encoder.num_pixels
            return ops.reshape(logits, (-1, count, self.head.num_answers)), ops.reshape(
                alpha, (-1, count, self.encoder.num_pixels)
            )
        encoded = self.question_encoder(flat_questions, training=training)  # (batch * questions, question_dim)
        flat_grid = ops.repeat(grid, count, axis=0)  # (batch * questions, num_pixels, encoder_dim)
        # (batch * questions, num_answers)
        logits, alpha = self.head(encoded, flat_pooled, flat_grid, training=training)
        logits = ops.reshape(logits, (-1, count, self.head.num_answers))  # (batch, questions, num_answers)
        return logits, ops.reshape(alpha, (-1, count, self.encoder.num_pixels))  # (batch, questions, num_pixels)

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            question_encoder=keras.saving.serialize_keras_object(self.question_encoder),
            head=keras.saving.serialize_keras_object(self.head),
            use_image=self.use_image,
            use_question=self.use_question,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        parts = {
            name: keras.saving.deserialize_keras_object(config.pop(name))
            for name in ("encoder", "question_encoder", "head")
        }
        return cls(**parts, **config)


def build_vqa_model(
    run_config,
    question_vocab_size: int,
    num_answers: int,
    image_size: int,
    encoder: ImageEncoder | None = None,
    precision: str | None = None,
) -> VQAModel:
    """A built VQAModel from a RunConfig's `model` and `vqa` sections.

    Args:
        encoder: ImageEncoder. A trained encoder to start from (`--encoder-from`); frozen unless
            `model.encoder_trainable`. Defaults to a new one built from `model`.
    """
    vqa = run_config.vqa
    if encoder is None:  # attention reads the grid only: no flatten projection that would get no gradient
        encoder = build_image_encoder(run_config.model, image_size, "avg" if vqa.attention else None)
    elif not run_config.model.encoder_trainable:
        encoder.trainable = False
    if not vqa.use_image:
        encoder.trainable = False  # it receives no gradient
    question_encoder = QuestionEncoder(
        question_vocab_size, vqa.question_embedding_dim, vqa.question_hidden_dim, name="question_encoder"
    )
    head = VQAHead(
        num_answers,
        fusion=vqa.fusion,
        fusion_dim=vqa.fusion_dim,
        mlp_dim=vqa.mlp_dim,
        dropout_rate=vqa.dropout_rate,
        attention=vqa.attention,
        attention_dim=vqa.attention_dim,
        image_norm=vqa.image_norm,
        image_hidden_dim=vqa.image_hidden_dim,
        name="vqa_head",
    )
    model = VQAModel(
        encoder, question_encoder, head, use_image=vqa.use_image, use_question=vqa.use_question, name="vqa_model"
    )
    model.build()
    if not vqa.use_image:  # the image branch of the head gets no gradient in the blind ablation
        for layer in (head.image_projection, head.image_batch_norm, head.image_hidden, head.soft_attention):
            if layer is not None:
                layer.trainable = False
    if not vqa.use_question:  # nor does the question branch in the image-only one
        for layer in (question_encoder, head.question_projection, head.soft_attention):
            if layer is not None:
                layer.trainable = False
    return apply_precision(model, precision or run_config.model.precision)


def weight_key(model: keras.Model, variable) -> str:
    """A weight's path inside its model: a model built inside its own scope prefixes its name; a loaded one may not."""
    return variable.path.removeprefix(f"{model.name}/")


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Every weight of `source` into the variable of the same path in `target` (the same network, built from a
    config that may differ in what trains or in dropout)."""
    key = weight_key
    by_path = {key(source, v): v for v in source.weights}
    missing = [
        key(target, v)
        for v in target.weights
        if by_path.get(key(target, v)) is None or tuple(by_path[key(target, v)].shape) != tuple(v.shape)
    ]
    if missing or len(by_path) != len(target.weights):
        raise CaptionerError(
            f"the --init-from model and this one differ ({(missing or ['variable count'])[0]}); start from a run of "
            f"the same network"
        )
    for variable in target.weights:
        variable.assign(by_path[key(target, variable)])
