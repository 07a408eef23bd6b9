"""Comparing the decisions (answers, caption words) of two models that are close but not one model.

Two models that are not numerically identical by construction (a run started from another at learning rate 0 whose
batch norms' running statistics moved, a run trained by two processes instead of one) give probabilities that differ
a little. Their arg-max decisions agree wherever the reference model's margin is clear, and may differ where a
decision sits near a tie: how near depends on the CPU's rounding. So a test asserts equal decisions only where the
reference's margin (top probability minus the second) exceeds `margin`, and that such decisions are most of them,
so the assertion cannot pass by having nothing to compare.

Where they are one model (the same weights through another backend, batch size, runtime or a save -> load), the
suite compares decisions exactly: their probabilities differ in the last float32 digits, which flips a decision only
at a margin under about 1e-6.
"""

from __future__ import annotations

import numpy as np
from keras import ops


def margins(probabilities: np.ndarray) -> np.ndarray:
    """The top probability minus the second, over the last axis: (..., classes) -> (...)."""
    top2 = np.sort(np.asarray(probabilities, np.float64), axis=-1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


def assert_same_answers_where_clear(
    reference: np.ndarray, other: np.ndarray, margin: float = 0.1, min_clear: float = 0.5
) -> None:
    """reference, other: (n, classes) probabilities of two models on the same n questions. Equal arg-max wherever the
    reference's margin exceeds `margin`; at least `min_clear` of the questions are clear."""
    reference, other = np.asarray(reference), np.asarray(other)
    assert reference.shape == other.shape, (reference.shape, other.shape)
    clear = margins(reference) > margin
    assert clear.mean() >= min_clear, f"only {clear.sum()} of {len(clear)} decisions have a margin over {margin}"
    differ = np.flatnonzero(clear & (reference.argmax(-1) != other.argmax(-1)))
    assert not len(differ), (
        f"{len(differ)} clear decisions differ; (row, reference's class and p, other's class and p): "
        + str(
            [
                (
                    int(i),
                    int(reference[i].argmax()),
                    round(float(reference[i].max()), 3),
                    int(other[i].argmax()),
                    round(float(other[i].max()), 3),
                )
                for i in differ[:5]
            ]
        )
    )


def step_probabilities(model, vocab, images: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """A caption model's next-word distributions along given captions, read with teacher forcing: images (batch, size,
    size, 3) uint8, tokens (batch, steps) generated words (<end> then padding) -> (batch, steps, vocab), the words
    greedy search never takes (<pad>, <start>, <unk>) left out."""
    tokens = np.asarray(tokens, np.int32)
    # (batch, steps)
    inputs = np.concatenate([np.full((len(tokens), 1), vocab.start_id, np.int32), tokens[:, :-1]], axis=1)
    logits = ops.convert_to_numpy(
        ops.cast(model({"images": images, "tokens": inputs[:, None]}, training=False), "float32")
    )[:, 0]  # (batch, steps, vocab)
    logits[..., [vocab.pad_id, vocab.start_id, vocab.unk_id]] = -np.inf
    probabilities = np.exp(logits - logits.max(-1, keepdims=True))  # (batch, steps, vocab)
    return probabilities / probabilities.sum(-1, keepdims=True)


def step_margins(model, vocab, images: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The margin of each greedy decision of a caption model on its captions (`step_probabilities`): (batch, steps)."""
    return margins(step_probabilities(model, vocab, images, tokens))


def assert_same_captions_where_clear(
    step_margin: np.ndarray,
    reference: np.ndarray,
    other: np.ndarray,
    end_id: int,
    margin: float = 0.1,
    min_clear: float = 0.5,
) -> None:
    """Greedy tokens (batch, steps) of two models: equal up to the reference's first decision with a margin under
    `margin` (`step_margins`), whole where there is none before its <end>; at least `min_clear` of the captions are
    clear to the end."""
    reference, other = np.asarray(reference), np.asarray(other)
    assert reference.shape == other.shape, (reference.shape, other.shape)
    whole = 0
    for row, (mine, theirs, row_margins) in enumerate(zip(reference, other, step_margin)):
        length = int(np.argmax(mine == end_id)) + 1 if end_id in mine else len(mine)  # words up to <end>, included
        unclear = np.flatnonzero(row_margins[:length] <= margin)
        agreed = int(unclear[0]) if len(unclear) else length  # decisions before this one are clear
        assert mine[:agreed].tolist() == theirs[:agreed].tolist(), (
            row,
            mine.tolist(),
            theirs.tolist(),
            row_margins.round(3).tolist(),
        )
        whole += not len(unclear)
    assert whole >= min_clear * len(reference), f"only {whole} of {len(reference)} captions are clear to the end"


def record_probabilities(run, records) -> np.ndarray:
    """Each question's answer distribution (n, num_answers) under a loaded VQA run, one image and question a row."""
    from captioner.data.images import load_image
    from captioner.generation.answering import Answerer

    answerer = Answerer(run.model, run.vocab, run.answers, run.config.vqa.max_question_length)
    images = np.stack([load_image(r.image, run.model.encoder.image_size) for r in records])  # (n, size, size, 3)
    questions = answerer.question_array([[answerer.encode(r.question)] for r in records])  # (n, 1, steps)
    return answerer(images, questions)[0][:, 0]  # (n, num_answers)
