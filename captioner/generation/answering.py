"""Answering questions with a trained VQAModel: one compiled function (any backend) for any batch of images
and questions.

`<other>` (answer id 0) is never the answer: its probability is set to zero before the others are
renormalised, as it stands for every answer the classifier does not know.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from keras import ops

from captioner import backend
from captioner.data.vocab import AnswerVocabulary, Vocabulary, tokenize
from captioner.models.networks import VQAModel


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
        never_other = np.zeros(len(answers), np.float32)
        never_other[AnswerVocabulary.other_id] = -1e9

        def probabilities(images, questions):
            # (batch, questions, answers), (batch, questions, pixels)
            logits, alpha = model.answer(images, questions, training=False)
            return ops.softmax(ops.cast(logits, "float32") + never_other, axis=-1), ops.cast(alpha, "float32")

        specs = [((None, size, size, 3), "uint8"), ((None, None, self.max_question_length), "int32")]
        self._probabilities = backend.CompiledFunction(probabilities, model.variables, specs)

    @property
    def trace_count(self) -> int:
        return self._probabilities.trace_count

    def encode(self, question: str) -> EncodedQuestion:
        words = tokenize(question)[: self.max_question_length]
        ids = self.vocab.encode(question, self.max_question_length)
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
        questions = np.asarray(questions, np.int32)
        per_image = questions.shape[1]
        if backend.name() == "jax":  # jax.jit compiles per shape: pad the questions axis as the batch axis is padded
            padding = np.zeros((len(questions), backend.bucket(per_image) - per_image, questions.shape[2]), np.int32)
            padding[:, :, 0] = self.vocab.unk_id  # a padding question is one unknown word, never all padding
            questions = np.concatenate([questions, padding], axis=1)  # (batch, bucket(per_image), steps)
        probabilities, attention = self._probabilities(np.asarray(images, np.uint8), questions)
        return probabilities[:, :per_image], attention[:, :per_image]

    def top(self, probabilities: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable answers of one question's distribution (num_answers,)."""
        order = np.argsort(-probabilities)[:k]
        return [
            (self.answers.answers[int(i)], float(probabilities[int(i)]))
            for i in order
            if int(i) != AnswerVocabulary.other_id
        ]
