"""Records to padded int arrays (numpy only, no TensorFlow): teacher-forcing caption inputs and targets, questions
grouped per image with their answers. `preprocessing` turns these into `tf.data`; anything else (a numpy-fed
`fit`, a benchmark on a machine without TensorFlow) can use them directly."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from captioner.data import CaptionRecord, QARecord
from captioner.data.vocab import AnswerVocabulary, Vocabulary, tokenize


def padded_caption_length(records: Sequence[CaptionRecord], limit: int, percentile: float = 100.0) -> int:
    """Words to pad captions to: the `percentile` of the training captions' lengths (100: the longest), at most
    `limit`. Not further: padded steps cost time."""
    lengths = [len(tokenize(c)) for r in records for c in r.captions]
    return min(int(limit), int(np.ceil(np.percentile(lengths, percentile))))


def caption_arrays(
    records: Sequence[CaptionRecord], vocab: Vocabulary, captions_per_image: int, max_caption_length: int
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forcing inputs `<start> w1..wn` and targets `w1..wn <end>`, zero-padded.

    Images with fewer captions get all-padding rows, which the loss ignores; extra captions are dropped.

    Returns:
        inputs, targets: int32, each (num_records, captions_per_image, max_caption_length + 1).
    """
    steps = max_caption_length + 1
    inputs = np.zeros((len(records), captions_per_image, steps), np.int32)
    targets = np.zeros_like(inputs)
    for i, record in enumerate(records):
        for j, caption in enumerate(record.captions[:captions_per_image]):
            ids = vocab.encode_caption(caption, max_caption_length)  # <start> w1..wn <end>
            inputs[i, j, : len(ids) - 1] = ids[:-1]
            targets[i, j, : len(ids) - 1] = ids[1:]
    return inputs, targets


def group_questions(records: Sequence[QARecord], questions_per_image: int) -> list[tuple[str, list[QARecord]]]:
    """Questions grouped by image (first-seen order), at most `questions_per_image` per group, so each image
    is encoded once for all of its questions; an image with more questions gets several groups."""
    by_image: dict[str, list[QARecord]] = {}
    for record in records:
        by_image.setdefault(record.image, []).append(record)
    return [
        (image, questions[start : start + questions_per_image])
        for image, questions in by_image.items()
        for start in range(0, len(questions), questions_per_image)
    ]


def question_arrays(
    groups: Sequence[tuple[str, Sequence[QARecord]]],
    vocab: Vocabulary,
    answers: AnswerVocabulary,
    questions_per_image: int,
    max_question_length: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Question word ids and answer ids, zero-padded; padding questions and `<other>` answers have target 0 (ignored).

    Returns:
        questions: int32 (num_groups, questions_per_image, max_question_length); targets: int32 (num_groups,
        questions_per_image).
    """
    questions = np.zeros((len(groups), questions_per_image, max_question_length), np.int32)
    targets = np.zeros((len(groups), questions_per_image), np.int32)
    for i, (_, group) in enumerate(groups):
        for j, record in enumerate(group):
            ids = vocab.encode(record.question, max_question_length) or [vocab.unk_id]  # never an all-padding question
            questions[i, j, : len(ids)] = ids
            targets[i, j] = answers.encode(record.answer)
    return questions, targets
