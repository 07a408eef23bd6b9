"""Caption generation, written once: batched greedy and beam search in graph mode.

The searches know nothing of the model. They take a step function

    step_fn(tokens (n,), state) -> (logits (n, vocab), new_state, attention (n, num_pixels))

and an initial state (a tuple of (n, ...) tensors). `CaptionGenerator` binds a CaptionModel to them inside
one `tf.function` (encode + search), traced once per input signature, not per batch.
Decoding stops on the `<end>` id, never on strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import tensorflow as tf

from captioner.models import CaptionModel
from captioner.vocab import Vocabulary

EAGER_BELOW = 8  # batches this small skip tracing while nothing is traced yet (CaptionGenerator.__call__)
StepFn = Callable[[tf.Tensor, tuple], tuple[tf.Tensor, tuple, tf.Tensor]]


def greedy_search(step_fn: StepFn, state: tuple, start_id: int, end_id: int, max_length: int, num_pixels: int = 0):
    """Most likely next word at every step, for a whole batch at once.

    Returns:
        tokens (batch, max_length) int32, 0 after `<end>`; scores (batch,) summed log-probabilities;
        attention (batch, max_length, num_pixels), zero after `<end>`.
    """
    batch = tf.shape(tf.nest.flatten(state)[0])[0]

    def body(t, tokens, state, finished, scores, token_array, attention_array):
        logits, state, attention = step_fn(tokens, state)  # (batch, vocab), ..., (batch, num_pixels)
        log_probs = tf.nn.log_softmax(logits)  # (batch, vocab)
        next_tokens = tf.argmax(log_probs, axis=-1, output_type=tf.int32)  # (batch,)
        next_tokens = tf.where(finished, 0, next_tokens)
        gained = tf.gather(log_probs, next_tokens, batch_dims=1)  # (batch,)
        scores += tf.where(finished, 0.0, gained)
        attention = tf.where(finished[:, None], 0.0, attention)  # (batch, num_pixels)
        token_array = token_array.write(t, next_tokens)
        attention_array = attention_array.write(t, attention)
        finished = finished | tf.equal(next_tokens, end_id)
        return t + 1, next_tokens, state, finished, scores, token_array, attention_array

    def not_done(t, tokens, state, finished, *_):
        return tf.logical_and(t < max_length, tf.logical_not(tf.reduce_all(finished)))

    loop = (
        tf.constant(0),
        tf.fill([batch], tf.constant(start_id, tf.int32)),
        state,
        tf.zeros([batch], tf.bool),
        tf.zeros([batch], tf.float32),
        tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=tf.TensorShape([None])),
        tf.TensorArray(tf.float32, size=0, dynamic_size=True, element_shape=tf.TensorShape([None, num_pixels])),
    )
    steps, _, _, _, scores, token_array, attention_array = tf.while_loop(not_done, body, loop, maximum_iterations=max_length)
    pad = max_length - steps
    tokens = tf.pad(tf.transpose(token_array.stack()), [[0, 0], [0, pad]])  # (batch, max_length)
    attention = tf.pad(tf.transpose(attention_array.stack(), [1, 0, 2]), [[0, 0], [0, pad], [0, 0]])  # (batch, max_length, num_pixels)
    return tokens, scores, attention


def beam_search(
    step_fn: StepFn,
    state: tuple,
    start_id: int,
    end_id: int,
    max_length: int,
    beam_size: int,
    length_penalty: float = 1.0,
    num_pixels: int = 0,
):
    """Batched beam search; the state must already be repeated `beam_size` times per image (row b*k + j).

    Finished beams stay in the beam with a frozen score and compete with the live ones; the winner is the
    beam with the best score / length**length_penalty. If no beam reaches `<end>` by `max_length`, the best
    unfinished beam is returned (no crash, no empty caption).

    Returns:
        tokens (batch, max_length) int32, 0 after `<end>`; scores (batch,) length-normalised log-probabilities;
        attention (batch, max_length, num_pixels).
    """
    k = beam_size
    flat = tf.shape(tf.nest.flatten(state)[0])[0]
    batch = flat // k
    # Only beam 0 is live at the start, so the k beams do not all pick the same first word.
    beam_scores = tf.tile(tf.concat([[0.0], tf.fill([k - 1], -1e9)], 0)[None, :], [batch, 1])  # (batch, k)
    offsets = (tf.range(batch) * k)[:, None]  # (batch, 1)

    def body(t, tokens, state, finished, beam_scores, lengths, sequences, attentions):
        logits, state, attention = step_fn(tokens, state)  # (batch*k, vocab), ..., (batch*k, num_pixels)
        vocab = tf.shape(logits)[-1]
        log_probs = tf.reshape(tf.nn.log_softmax(logits), [batch, k, vocab])  # (batch, k, vocab)
        # A finished beam may only emit <pad> at no cost, so its score is carried unchanged.
        pad_only = tf.concat([tf.zeros([1]), tf.fill([vocab - 1], -1e9)], 0)  # (vocab,)
        log_probs = tf.where(finished[:, :, None], pad_only[None, None, :], log_probs)
        candidates = tf.reshape(beam_scores[:, :, None] + log_probs, [batch, k * vocab])  # (batch, k*vocab)
        beam_scores, index = tf.math.top_k(candidates, k=k)  # (batch, k) each
        parent = index // vocab  # (batch, k)
        token = index % vocab  # (batch, k)
        rows = tf.reshape(parent + offsets, [-1])  # (batch*k,)
        state = tf.nest.map_structure(lambda s: tf.gather(s, rows), state)
        was_finished = tf.gather(finished, parent, batch_dims=1)  # (batch, k)
        lengths = tf.gather(lengths, parent, batch_dims=1) + tf.cast(~was_finished, tf.float32)
        step_mask = tf.one_hot(t, max_length, dtype=tf.int32)  # (max_length,)
        sequences = tf.gather(sequences, parent, batch_dims=1) + token[:, :, None] * step_mask  # (batch, k, max_length)
        attention = tf.reshape(tf.gather(attention, rows), [batch, k, 1, num_pixels])
        attention = tf.where(was_finished[:, :, None, None], 0.0, attention)
        attentions = tf.gather(attentions, parent, batch_dims=1) + attention * tf.cast(step_mask, tf.float32)[:, None]
        finished = was_finished | tf.equal(token, end_id)
        return t + 1, tf.reshape(token, [-1]), state, finished, beam_scores, lengths, sequences, attentions

    def not_done(t, tokens, state, finished, *_):
        return tf.logical_and(t < max_length, tf.logical_not(tf.reduce_all(finished)))

    loop = (
        tf.constant(0),
        tf.fill([flat], tf.constant(start_id, tf.int32)),
        state,
        tf.zeros([batch, k], tf.bool),
        beam_scores,
        tf.zeros([batch, k], tf.float32),
        tf.zeros([batch, k, max_length], tf.int32),
        tf.zeros([batch, k, max_length, num_pixels], tf.float32),
    )
    _, _, _, finished, beam_scores, lengths, sequences, attentions = tf.while_loop(
        not_done, body, loop, maximum_iterations=max_length
    )
    normalised = beam_scores / tf.pow(tf.maximum(lengths, 1.0), length_penalty)  # (batch, k)
    best = tf.argmax(normalised, axis=-1, output_type=tf.int32)  # (batch,)
    tokens = tf.gather(sequences, best, batch_dims=1)  # (batch, max_length)
    # <pad> steps of a finished beam already hold 0; nothing follows <end>.
    return tokens, tf.gather(normalised, best, batch_dims=1), tf.gather(attentions, best, batch_dims=1)


@dataclass
class Generated:
    """Generated captions of a batch, as numpy arrays and strings."""

    tokens: np.ndarray  # (batch, max_length) int32
    scores: np.ndarray  # (batch,)
    attention: np.ndarray  # (batch, max_length, num_pixels)
    captions: list[str]


class CaptionGenerator:
    """Greedy or beam captions for batches of images from a CaptionModel.

    Args:
        model: CaptionModel.
        vocab: Vocabulary.
        max_length: int. Generated tokens at most, `<end>` included.
        beam_size: int. 1 is greedy. Defaults to 1.
        length_penalty: float. Beam scores are divided by length**length_penalty. Defaults to 1.0.
    """

    def __init__(self, model: CaptionModel, vocab: Vocabulary, max_length: int, beam_size: int = 1, length_penalty: float = 1.0):
        if beam_size < 1:
            raise ValueError(f"beam size must be at least 1, got {beam_size}")
        self.model = model
        self.vocab = vocab
        self.max_length = int(max_length)
        self.beam_size = int(beam_size)
        self.length_penalty = float(length_penalty)
        size = model.encoder.image_size
        spec = tf.TensorSpec((None, size, size, 3), tf.uint8)
        # One trace serves every batch size; `trace_count` lets tests and benchmarks check that.
        self.trace_count = 0
        self._generate = tf.function(self._traced, input_signature=[spec])

    def _traced(self, images):
        self.trace_count += 1  # Python side effect: runs only while tracing
        return self._search(images)

    def _search(self, images):
        decoder = self.model.decoder
        grid, pooled = self.model.encode(images)  # (batch, num_pixels, encoder_dim), (batch, pooled_dim)
        state = decoder.initial_state(pooled, grid)
        memory = decoder.memory(grid)  # attended features, projected once per image
        num_pixels = self.model.encoder.num_pixels if decoder.uses_attention else 0
        if self.beam_size > 1:
            # Beams of one image share its memory: repeat once here; beam reordering never moves rows across images.
            state, memory = tf.nest.map_structure(lambda s: tf.repeat(s, self.beam_size, axis=0), (state, memory))

        # Words a caption may never contain: <pad>, <start> and <unk> (a word the vocabulary cut off is never an
        # answer; the model's next most likely word is). Finished beams emit <pad> outside this step.
        banned = np.zeros(len(self.vocab), np.float32)
        banned[[self.vocab.pad_id, self.vocab.start_id, self.vocab.unk_id]] = -1e9
        banned = tf.constant(banned)  # (vocab,)

        def step_fn(tokens, state):
            logits, state, attention = decoder.step(tokens, state, memory)  # (n, vocab), ..., (n, num_pixels)
            # Scores and softmax in float32 whatever the compute precision (captioner.precision).
            return tf.cast(logits, tf.float32) + banned, state, tf.cast(attention, tf.float32)

        start, end = self.vocab.start_id, self.vocab.end_id
        if self.beam_size == 1:
            return greedy_search(step_fn, state, start, end, self.max_length, num_pixels)
        return beam_search(step_fn, state, start, end, self.max_length, self.beam_size, self.length_penalty, num_pixels)

    def __call__(self, images: np.ndarray) -> Generated:
        """Captions for a uint8 batch (batch, size, size, 3).

        Until the search has been traced, a batch of fewer than EAGER_BELOW images is searched eagerly: tracing
        costs about a second, more than an eager search of a few images (`captioner caption photo.jpg`).
        The same operations run either way (a test checks the captions are equal).
        """
        images = tf.convert_to_tensor(images, tf.uint8)  # (batch, size, size, 3)
        search = self._search if self.trace_count == 0 and images.shape[0] < EAGER_BELOW else self._generate
        tokens, scores, attention = (t.numpy() for t in search(images))
        return Generated(tokens, scores, attention, [self.vocab.decode(row) for row in tokens])
