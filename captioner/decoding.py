"""Caption generation, written once in `keras.ops`: batched greedy and beam search for every Keras backend.

The searches know nothing of the model. They take a step function

    step_fn(tokens (n,), state) -> (logits (n, vocab), new_state, attention (n, num_pixels))

and an initial state (a structure of (n, ...) tensors), and loop with `ops.while_loop` until every sequence
has emitted `<end>` or `max_length` words. `CaptionGenerator` binds a CaptionModel to them (encode + search)
and compiles that once with the backend's compiler (`captioner.backend.CompiledFunction`: `tf.function` with
a batch-polymorphic signature on TensorFlow, `jax.jit` on JAX). Decoding stops on the `<end>` id, never on
strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import keras
import numpy as np
from keras import ops

from captioner import backend
from captioner.models import CaptionModel
from captioner.vocab import Vocabulary

EAGER_BELOW = 8  # TensorFlow: batches this small skip tracing while nothing is traced yet (CaptionGenerator.__call__)
StepFn = Callable[..., tuple]


def _batch_rows(state) -> int:
    return ops.shape(keras.tree.flatten(state)[0])[0]


def _at(t, max_length: int, dtype: str):
    """(max_length,) one at position t, zero elsewhere: writes step t into a preallocated sequence."""
    return ops.cast(ops.equal(ops.arange(max_length, dtype="int32"), t), dtype)


def _not_done(max_length: int):
    def cond(t, tokens, state, finished, *_):
        return ops.logical_and(ops.less(t, max_length), ops.logical_not(ops.all(finished)))

    return cond


def greedy_search(step_fn: StepFn, state, start_id: int, end_id: int, max_length: int, num_pixels: int = 0):
    """Most likely next word at every step, for a whole batch at once.

    Returns:
        tokens (batch, max_length) int32, 0 after `<end>`; scores (batch,) summed log-probabilities;
        attention (batch, max_length, num_pixels), zero after `<end>`.
    """
    batch = _batch_rows(state)

    def body(t, tokens, state, finished, scores, sequences, attentions):
        logits, state, attention = step_fn(tokens, state)  # (batch, vocab), ..., (batch, num_pixels)
        log_probs = ops.log_softmax(logits, axis=-1)  # (batch, vocab)
        # top_k(1), not argmax: Keras's argmax adds two passes over the vocabulary on TensorFlow (its -0.0 fix)
        gained, best = ops.top_k(log_probs, k=1)  # (batch, 1) each: the chosen word and its log-probability
        next_tokens = ops.where(finished, 0, ops.cast(best[:, 0], "int32"))  # (batch,)
        gained = gained[:, 0]
        scores = scores + ops.where(finished, 0.0, gained)
        attention = ops.where(finished[:, None], 0.0, attention)  # (batch, num_pixels)
        sequences = sequences + next_tokens[:, None] * _at(t, max_length, "int32")[None, :]  # (batch, max_length)
        attentions = attentions + attention[:, None, :] * _at(t, max_length, "float32")[None, :, None]
        finished = ops.logical_or(finished, ops.equal(next_tokens, end_id))
        return t + 1, next_tokens, state, finished, scores, sequences, attentions

    loop = (
        ops.convert_to_tensor(0, "int32"),
        ops.full((batch,), start_id, "int32"),
        state,
        ops.zeros((batch,), "bool"),
        ops.zeros((batch,), "float32"),
        ops.zeros((batch, max_length), "int32"),
        ops.zeros((batch, max_length, num_pixels), "float32"),
    )
    *_, scores, tokens, attention = ops.while_loop(_not_done(max_length), body, loop, maximum_iterations=max_length)
    return tokens, scores, attention


def beam_search(
    step_fn: StepFn,
    state,
    start_id: int,
    end_id: int,
    max_length: int,
    beam_size: int,
    length_penalty: float = 1.0,
    num_pixels: int = 0,
    n_best: bool = False,
):
    """Batched beam search; the state must already be repeated `beam_size` times per image (row b*k + j).

    Finished beams stay in the beam with a frozen score and compete with the live ones; the winner is the
    beam with the best score / length**length_penalty. If no beam reaches `<end>` by `max_length`, the best
    unfinished beam is returned (no crash, no empty caption). Every per-beam array is kept flat, (batch*k, ...),
    so reordering beams is one `ops.take` of rows.

    Returns:
        tokens (batch, max_length) int32, 0 after `<end>`; scores (batch,) length-normalised log-probabilities;
        attention (batch, max_length, num_pixels). With `n_best`, also every beam best first: tokens
        (batch, beam_size, max_length) and their length-normalised scores (batch, beam_size).
    """
    k = beam_size
    flat = _batch_rows(state)
    batch = flat // k
    # Only beam 0 is live at the start, so the k beams do not all pick the same first word.
    first = ops.convert_to_tensor(np.array([0.0] + [-1e9] * (k - 1), np.float32))  # (k,)
    offsets = (ops.arange(batch, dtype="int32") * k)[:, None]  # (batch, 1)

    def body(t, tokens, state, finished, beam_scores, lengths, sequences, attentions):
        logits, state, attention = step_fn(tokens, state)  # (batch*k, vocab), ..., (batch*k, num_pixels)
        vocab = logits.shape[-1]
        log_probs = ops.reshape(ops.log_softmax(logits, axis=-1), (batch, k, vocab))  # (batch, k, vocab)
        # A finished beam may only emit <pad> at no cost, so its score is carried unchanged.
        pad_only = ops.convert_to_tensor(np.array([0.0] + [-1e9] * (vocab - 1), np.float32))  # (vocab,)
        log_probs = ops.where(ops.reshape(finished, (batch, k, 1)), pad_only[None, None, :], log_probs)
        candidates = ops.reshape(beam_scores[:, :, None] + log_probs, (batch, k * vocab))  # (batch, k*vocab)
        beam_scores, index = ops.top_k(candidates, k=k)  # (batch, k) each
        index = ops.cast(index, "int32")
        rows = ops.reshape(index // vocab + offsets, (-1,))  # (batch*k,) the parent beam of each new beam
        token = ops.reshape(index % vocab, (-1,))  # (batch*k,)
        state = keras.tree.map_structure(lambda s: ops.take(s, rows, axis=0), state)
        was_finished = ops.take(finished, rows, axis=0)  # (batch*k,)
        lengths = ops.take(lengths, rows, axis=0) + ops.cast(ops.logical_not(was_finished), "float32")
        sequences = ops.take(sequences, rows, axis=0) + token[:, None] * _at(t, max_length, "int32")[None, :]
        attention = ops.where(was_finished[:, None], 0.0, ops.take(attention, rows, axis=0))  # (batch*k, num_pixels)
        attentions = ops.take(attentions, rows, axis=0) + attention[:, None, :] * _at(t, max_length, "float32")[None, :, None]
        finished = ops.logical_or(was_finished, ops.equal(token, end_id))
        return t + 1, token, state, finished, beam_scores, lengths, sequences, attentions

    loop = (
        ops.convert_to_tensor(0, "int32"),
        ops.full((flat,), start_id, "int32"),
        state,
        ops.zeros((flat,), "bool"),
        ops.zeros((batch, k), "float32") + first[None, :],  # (batch, k)
        ops.zeros((flat,), "float32"),
        ops.zeros((flat, max_length), "int32"),
        ops.zeros((flat, max_length, num_pixels), "float32"),
    )
    *_, beam_scores, lengths, sequences, attentions = ops.while_loop(
        _not_done(max_length), body, loop, maximum_iterations=max_length
    )
    normalised = beam_scores / ops.power(ops.maximum(ops.reshape(lengths, (batch, k)), 1.0), length_penalty)  # (batch, k)
    best = ops.cast(ops.argmax(normalised, axis=-1), "int32")  # (batch,)
    winners = best + offsets[:, 0]  # (batch,) rows of the flat arrays
    # <pad> steps of a finished beam already hold 0; nothing follows <end>.
    score = ops.take_along_axis(normalised, best[:, None], axis=1)[:, 0]  # (batch,)
    found = ops.take(sequences, winners, axis=0), score, ops.take(attentions, winners, axis=0)
    if not n_best:
        return found
    order = ops.cast(ops.argsort(-normalised, axis=-1), "int32")  # (batch, k) best first
    every = ops.reshape(ops.take(sequences, ops.reshape(order + offsets, (-1,)), axis=0), (batch, k, max_length))
    return (*found, every, ops.take_along_axis(normalised, order, axis=1))


@dataclass
class Generated:
    """Generated captions of a batch, as numpy arrays and strings."""

    tokens: np.ndarray  # (batch, max_length) int32
    scores: np.ndarray  # (batch,)
    attention: np.ndarray  # (batch, max_length, num_pixels)
    captions: list[str]
    beams: list[list[tuple[str, float]]] | None = None  # n_best: every beam's caption and score, best first


class CaptionGenerator:
    """Greedy or beam captions for batches of images from a CaptionModel.

    Args:
        model: CaptionModel.
        vocab: Vocabulary.
        max_length: int. Generated tokens at most, `<end>` included.
        beam_size: int. 1 is greedy. Defaults to 1.
        length_penalty: float. Beam scores are divided by length**length_penalty. Defaults to 1.0.
        n_best: bool. Also return every beam's caption (beam search only). Defaults to False.
    """

    def __init__(self, model: CaptionModel, vocab: Vocabulary, max_length: int, beam_size: int = 1, length_penalty: float = 1.0,
                 n_best: bool = False):
        if beam_size < 1:
            raise ValueError(f"beam size must be at least 1, got {beam_size}")
        self.model = model
        self.vocab = vocab
        self.max_length = int(max_length)
        self.beam_size = int(beam_size)
        self.length_penalty = float(length_penalty)
        self.n_best = bool(n_best) and self.beam_size > 1
        size = model.encoder.image_size
        # One trace serves every batch size (JAX: a handful of padded sizes); `trace_count` lets tests check it.
        self._generate = backend.CompiledFunction(self.search, model.variables, [((None, size, size, 3), "uint8")])

    @property
    def trace_count(self) -> int:
        return self._generate.trace_count

    def search(self, images):
        """Tokens, scores and attention of a uint8 image batch, as backend tensors (traceable: `export` uses it)."""
        decoder = self.model.decoder
        grid, pooled = self.model.encode(images)  # (batch, num_pixels, encoder_dim), (batch, pooled_dim)
        state = decoder.initial_state(pooled, grid)
        memory = decoder.memory(grid)  # attended features, projected once per image
        num_pixels = self.model.encoder.num_pixels if decoder.uses_attention else 0
        if self.beam_size > 1:
            # Beams of one image share its memory: repeat once here; beam reordering never moves rows across images.
            state, memory = keras.tree.map_structure(lambda s: ops.repeat(s, self.beam_size, axis=0), (state, memory))

        # Words a caption may never contain: <pad>, <start> and <unk> (a word the vocabulary cut off is never an
        # answer; the model's next most likely word is). Finished beams emit <pad> outside this step.
        banned = np.zeros(len(self.vocab), np.float32)
        banned[[self.vocab.pad_id, self.vocab.start_id, self.vocab.unk_id]] = -1e9
        banned = ops.convert_to_tensor(banned)  # (vocab,)

        def step_fn(tokens, state):
            logits, state, attention = decoder.step(tokens, state, memory)  # (n, vocab), ..., (n, num_pixels)
            # Scores and softmax in float32 whatever the compute precision (captioner.precision).
            return ops.cast(logits, "float32") + banned, state, ops.cast(attention, "float32")

        start, end = self.vocab.start_id, self.vocab.end_id
        if self.beam_size == 1:
            return greedy_search(step_fn, state, start, end, self.max_length, num_pixels)
        return beam_search(step_fn, state, start, end, self.max_length, self.beam_size, self.length_penalty, num_pixels, self.n_best)

    def __call__(self, images: np.ndarray) -> Generated:
        """Captions for a uint8 batch (batch, size, size, 3).

        On TensorFlow, until the search has been traced, a batch of fewer than EAGER_BELOW images is searched
        eagerly: tracing costs about a second, more than an eager search of a few images (`captioner caption photo.jpg`).
        The same operations run either way (a test checks the captions are equal).
        """
        images = np.asarray(images, np.uint8)  # (batch, size, size, 3)
        small = self.trace_count == 0 and len(images) < EAGER_BELOW and backend.name() == "tensorflow"
        tokens, scores, attention, *every = (self._generate.eager if small else self._generate)(images)
        beams = None
        if every:  # (batch, k, max_length), (batch, k)
            beams = [[(self.vocab.decode(row), float(score)) for row, score in zip(rows, image_scores)] for rows, image_scores in zip(*every)]
        return Generated(tokens, scores, attention, [self.vocab.decode(row) for row in tokens], beams)
