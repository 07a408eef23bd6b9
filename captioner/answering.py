"""Answering questions with a trained VQAModel: one graph-mode function for any batch of images and questions.

`<other>` (answer id 0) is never the answer: its probability is set to zero before the others are
renormalised, as it stands for every answer the classifier does not know.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from captioner.models import VQAModel
from captioner.vocab import AnswerVocabulary, Vocabulary, tokenize


@dataclass
class EncodedQuestion:
    """A question as word ids, with the words the vocabulary does not know."""

    ids: list[int]
    unknown_words: list[str]

    @property
    def all_unknown(self) -> bool:
        return bool(self.unknown_words) and len(self.unknown_words) == len(self.ids)


class Answerer:
    """Probabilities over the answer vocabulary for images and questions about them.

    Args:
        model: VQAModel.
        vocab: Vocabulary. Question words.
        answers: AnswerVocabulary.
        max_question_length: int. Words kept per question.
    """

    def __init__(self, model: VQAModel, vocab: Vocabulary, answers: AnswerVocabulary, max_question_length: int):
        self.model = model
        self.vocab = vocab
        self.answers = answers
        self.max_question_length = int(max_question_length)
        size = model.encoder.image_size
        self.trace_count = 0

        @tf.function(
            input_signature=[
                tf.TensorSpec((None, size, size, 3), tf.uint8),
                tf.TensorSpec((None, None, self.max_question_length), tf.int32),
            ],
            reduce_retracing=True,
        )
        def probabilities(images, questions):
            self.trace_count += 1  # Python side effect: runs once per trace, not per call
            logits, alpha = model.answer(images, questions, training=False)  # (batch, questions, answers), (batch, questions, pixels)
            never_other = tf.one_hot(AnswerVocabulary.other_id, len(answers), on_value=-1e9, off_value=0.0)  # (answers,)
            return tf.nn.softmax(tf.cast(logits, tf.float32) + never_other, axis=-1), tf.cast(alpha, tf.float32)

        self._probabilities = probabilities

    def encode(self, question: str) -> EncodedQuestion:
        words = tokenize(question)[: self.max_question_length]
        ids = [self.vocab.index.get(w, self.vocab.unk_id) for w in words]
        return EncodedQuestion(ids, [w for w, i in zip(words, ids) if i == self.vocab.unk_id])

    def question_array(self, questions: list[list[EncodedQuestion]]) -> np.ndarray:
        """(images, max questions per image, max_question_length) int32, zero-padded."""
        width = max((len(q) for q in questions), default=1) or 1
        array = np.zeros((len(questions), width, self.max_question_length), np.int32)
        for i, group in enumerate(questions):
            for j, question in enumerate(group):
                ids = question.ids or [self.vocab.unk_id]
                array[i, j, : len(ids)] = ids
        return array

    def __call__(self, images: np.ndarray, questions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images (batch, size, size, 3) uint8, questions (batch, per_image, steps) int32 ->
        probabilities (batch, per_image, num_answers) and attention (batch, per_image, num_pixels)."""
        probs, alpha = self._probabilities(tf.convert_to_tensor(images, tf.uint8), tf.convert_to_tensor(questions, tf.int32))
        return probs.numpy(), alpha.numpy()

    def top(self, probabilities: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable answers of one question's distribution (num_answers,)."""
        order = np.argsort(-probabilities)[:k]
        return [(self.answers.answers[int(i)], float(probabilities[int(i)])) for i in order if int(i) != AnswerVocabulary.other_id]
