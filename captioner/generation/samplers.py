"""How the next word is chosen: samplers as objects, in the spirit of keras-hub's, written once in `keras.ops`.

A sampler knows nothing of the model. Its `search` takes a step function

    step_fn(tokens (n,), state) -> (logits (n, vocab), new_state, attention (n, num_pixels))

an initial state (a structure of (n, ...) tensors, already repeated `rows_per_image` times per image), and an
optional logits hook `process(logits (n, vocab), sequences (n, max_length), t) -> logits` that sees every row's
caption so far (bans, a minimum length). It loops with `ops.while_loop` until every row has emitted `<end>` or
`max_length` words.

- `GreedySampler`: the most likely word at every step.
- `BeamSampler(beam_size, length_penalty, num_captions)`: beam search; the best beam, and the `num_captions` best.
- `RandomSampler(temperature, top_k, top_p, num_captions, length_penalty)`: `num_captions` captions sampled per
  image from the (tempered, truncated) distribution. Its randomness is an input, not a state: `noise(...)` draws
  uniforms with numpy from a seed, and the search picks word w where the cumulative probability first passes the
  step's uniform. The same seed gives the same captions on every backend and inside any compiled function.

Every sampler serialises (`get_config` / `get_sampler(config)`) and returns the same tuple: tokens (batch,
max_length), scores (batch,), attention (batch, max_length, num_pixels), and every candidate best first, tokens
(batch, rows, max_length) and scores (batch, rows).
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import numpy as np
from keras import ops

from captioner.errors import CaptionerError

StepFn = Callable[..., tuple]
Process = Callable[..., object]


def _batch_rows(state) -> int:
    return ops.shape(keras.tree.flatten(state)[0])[0]


def _at(t, max_length: int, dtype: str):
    """(max_length,) one at position t, zero elsewhere: writes step t into a preallocated sequence."""
    return ops.cast(ops.equal(ops.arange(max_length, dtype="int32"), t), dtype)


def _not_done(max_length: int):
    def cond(t, tokens, state, finished, *_):
        return ops.logical_and(ops.less(t, max_length), ops.logical_not(ops.all(finished)))

    return cond


def _loop(rows, start_id: int, state, max_length: int, num_pixels: int, *carried):
    """A search's first loop values: step 0, `<start>` for every row, the state, nothing finished, the search's
    own values (`carried`: scores, lengths...), empty sequences (rows, max_length) and attention (rows, max_length,
    num_pixels)."""
    return (
        ops.convert_to_tensor(0, "int32"),
        ops.full((rows,), start_id, "int32"),
        state,
        ops.zeros((rows,), "bool"),
        *carried,
        ops.zeros((rows, max_length), "int32"),
        ops.zeros((rows, max_length, num_pixels), "float32"),
    )


def _identity(logits, sequences, t):
    return logits


class Sampler:
    """Base class: `rows_per_image` rows of state per image, `search` over them, `get_config` to serialise."""

    name = ""
    rows_per_image = 1
    needs_noise = False

    def search(
        self,
        step_fn: StepFn,
        state,
        start_id: int,
        end_id: int,
        max_length: int,
        num_pixels: int = 0,
        process: Process | None = None,
        noise=None,
    ):
        raise NotImplementedError

    def noise(self, batch: int, max_length: int, seed: int) -> np.ndarray | None:
        """The uniforms a random sampler reads, (batch, rows_per_image, max_length) float32; None for the others."""
        return None

    def get_config(self) -> dict:
        return {"name": self.name}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items() if k != 'name')})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Sampler) and self.get_config() == other.get_config()


class GreedySampler(Sampler):
    """The most likely next word at every step, for a whole batch at once."""

    name = "greedy"

    def search(self, step_fn, state, start_id, end_id, max_length, num_pixels=0, process=None, noise=None):
        tokens, scores, attention = greedy_search(step_fn, state, start_id, end_id, max_length, num_pixels, process)
        return tokens, scores, attention, tokens[:, None, :], scores[:, None]


class BeamSampler(Sampler):
    """Beam search. Args: beam_size (>= 1); length_penalty (beams ranked by score / length**length_penalty);
    num_captions (how many of the beams are wanted, 1..beam_size; all beams are returned, best first)."""

    name = "beam"

    @staticmethod
    def check(beam_size: int, num_captions: int) -> None:
        """The values the constructor refuses, one line each (also `decoding.sampler_name`, before any search)."""
        if int(beam_size) < 1:
            raise CaptionerError(f"beam size must be at least 1 (got {beam_size})")
        if not 1 <= int(num_captions) <= int(beam_size):
            raise CaptionerError(
                f"--num-captions {num_captions} is more than the beam holds ({beam_size}); "
                f"raise --beam-size or ask for fewer"
            )

    def __init__(self, beam_size: int = 3, length_penalty: float = 1.0, num_captions: int = 1):
        self.check(beam_size, num_captions)
        self.beam_size, self.length_penalty, self.num_captions = (
            int(beam_size),
            float(length_penalty),
            int(num_captions),
        )
        self.rows_per_image = self.beam_size

    def search(self, step_fn, state, start_id, end_id, max_length, num_pixels=0, process=None, noise=None):
        return beam_search(
            step_fn,
            state,
            start_id,
            end_id,
            max_length,
            self.beam_size,
            self.length_penalty,
            num_pixels,
            n_best=True,
            process=process,
        )

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "beam_size": self.beam_size,
            "length_penalty": self.length_penalty,
            "num_captions": self.num_captions,
        }


class RandomSampler(Sampler):
    """Captions sampled word by word from the model's distribution.

    Args:
        temperature: float >= 0. Logits are divided by it: below 1 sharper, above 1 flatter; 0 takes the most
            likely word (greedy, row by row). Defaults to 1.0.
        top_k: int | None. Sample among the k most likely words only (>= 1). Defaults to None (all).
        top_p: float | None. Sample among the smallest set of most likely words whose probability reaches p
            (0 < p <= 1; nucleus sampling). Defaults to None (all).
        num_captions: int. Samples per image (>= 1). Defaults to 1.
        length_penalty: float. The samples are ranked by log-probability / length**length_penalty. Defaults to 1.0.
    """

    name = "sampling"
    needs_noise = True

    @staticmethod
    def check(temperature: float, top_k: int | None, top_p: float | None, num_captions: int) -> None:
        """The values the constructor refuses, one line each (also `decoding.sampler_name`, before any search)."""
        if float(temperature) < 0:
            raise CaptionerError(f"--temperature must be 0 or more (got {float(temperature):g})")
        if top_k is not None and int(top_k) < 1:
            raise CaptionerError(f"--top-k must be at least 1 (got {top_k}); leave it out to sample from every word")
        if top_p is not None and not 0.0 < float(top_p) <= 1.0:
            raise CaptionerError(f"--top-p must be in (0, 1] (got {top_p:g})")
        if float(temperature) == 0 and (top_k is not None or top_p is not None):
            raise CaptionerError(
                "--temperature 0 always takes the most likely word: --top-k/--top-p would change nothing; drop one"
            )
        if int(num_captions) < 1:
            raise CaptionerError(f"--num-captions must be at least 1 (got {num_captions})")

    def __init__(
        self,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        num_captions: int = 1,
        length_penalty: float = 1.0,
    ):
        temperature = float(temperature)
        self.check(temperature, top_k, top_p, num_captions)
        self.temperature, self.num_captions, self.length_penalty = temperature, int(num_captions), float(length_penalty)
        self.top_k = None if top_k is None else int(top_k)
        self.top_p = None if top_p is None else float(top_p)
        self.rows_per_image = self.num_captions

    def noise(self, batch: int, max_length: int, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).random((batch, self.num_captions, max_length), dtype=np.float32)

    def search(self, step_fn, state, start_id, end_id, max_length, num_pixels=0, process=None, noise=None):
        if noise is None:
            raise ValueError("RandomSampler.search needs the noise of RandomSampler.noise")
        return sample_search(
            step_fn,
            state,
            start_id,
            end_id,
            max_length,
            ops.reshape(noise, (-1, max_length)),
            self.truncate,
            self.num_captions,
            self.length_penalty,
            num_pixels,
            process,
        )

    def truncate(self, logits):
        """Probabilities (n, vocab) to sample from: tempered, then cut to the top k and to the top-p nucleus."""
        if self.temperature == 0:
            return ops.one_hot(ops.argmax(logits, axis=-1), ops.shape(logits)[-1], dtype="float32")  # (n, vocab)
        probs = ops.softmax(logits / self.temperature, axis=-1)  # (n, vocab)
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = ops.top_k(probs, k=self.top_k)[0][:, -1:]  # (n, 1) the k-th largest probability
            probs = ops.where(probs >= kth, probs, 0.0)
        if self.top_p is not None and self.top_p < 1.0:
            ranked = ops.top_k(probs, k=probs.shape[-1])[0]  # (n, vocab) descending
            before = ops.cumsum(ranked, axis=-1) - ranked  # mass of the words ranked above each
            total = ops.sum(probs, axis=-1, keepdims=True)  # (n, 1): what top-k left
            # the smallest probability still needed to reach p of the mass: the nucleus is every word at or above it
            needed = ops.min(ops.where(before < self.top_p * total, ranked, 2.0), axis=-1, keepdims=True)  # (n, 1)
            probs = ops.where(probs >= needed, probs, 0.0)
        return probs

    def get_config(self) -> dict:
        return {
            "name": self.name,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "num_captions": self.num_captions,
            "length_penalty": self.length_penalty,
        }


SAMPLERS: dict[str, type[Sampler]] = {"greedy": GreedySampler, "beam": BeamSampler, "sampling": RandomSampler}


def get_sampler(spec: str | dict | Sampler) -> Sampler:
    """A sampler from a name ("greedy", "beam", "sampling"), a `get_config()` dict, or a sampler (returned as is)."""
    if isinstance(spec, Sampler):
        return spec
    config = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = config.pop("name", None)
    if name not in SAMPLERS:
        raise CaptionerError(f"unknown sampler '{name}'; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[name](**config)


def greedy_search(
    step_fn: StepFn,
    state,
    start_id: int,
    end_id: int,
    max_length: int,
    num_pixels: int = 0,
    process: Process | None = None,
):
    """Most likely next word at every step, for a whole batch at once.

    Returns:
        tokens (batch, max_length) int32, 0 after `<end>`; scores (batch,) summed log-probabilities;
        attention (batch, max_length, num_pixels), zero after `<end>`.
    """
    process = process or _identity
    batch = _batch_rows(state)

    def body(t, tokens, state, finished, scores, sequences, attentions):
        logits, state, attention = step_fn(tokens, state)  # (batch, vocab), ..., (batch, num_pixels)
        log_probs = ops.log_softmax(process(logits, sequences, t), axis=-1)  # (batch, vocab)
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

    loop = _loop(batch, start_id, state, max_length, num_pixels, ops.zeros((batch,), "float32"))
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
    process: Process | None = None,
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
    process = process or _identity
    k = beam_size
    flat = _batch_rows(state)
    batch = flat // k
    # Only beam 0 is live at the start, so the k beams do not all pick the same first word.
    first = ops.convert_to_tensor(np.array([0.0] + [-1e9] * (k - 1), np.float32))  # (k,)
    offsets = (ops.arange(batch, dtype="int32") * k)[:, None]  # (batch, 1)

    def body(t, tokens, state, finished, beam_scores, lengths, sequences, attentions):
        logits, state, attention = step_fn(tokens, state)  # (batch*k, vocab), ..., (batch*k, num_pixels)
        vocab = logits.shape[-1]
        # (batch, k, vocab)
        log_probs = ops.reshape(ops.log_softmax(process(logits, sequences, t), axis=-1), (batch, k, vocab))
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
        attentions = (
            ops.take(attentions, rows, axis=0) + attention[:, None, :] * _at(t, max_length, "float32")[None, :, None]
        )
        finished = ops.logical_or(was_finished, ops.equal(token, end_id))
        return t + 1, token, state, finished, beam_scores, lengths, sequences, attentions

    loop = _loop(
        flat,
        start_id,
        state,
        max_length,
        num_pixels,
        ops.zeros((batch, k), "float32") + first[None, :],
        ops.zeros((flat,), "float32"),
    )
    *_, beam_scores, lengths, sequences, attentions = ops.while_loop(
        _not_done(max_length), body, loop, maximum_iterations=max_length
    )
    # (batch, k)
    normalised = beam_scores / ops.power(ops.maximum(ops.reshape(lengths, (batch, k)), 1.0), length_penalty)
    return _best_first(normalised, sequences, attentions, batch, k, max_length, n_best)


def _best_first(normalised, sequences, attentions, batch: int, k: int, max_length: int, every: bool):
    """The best row per image (tokens, score, attention) and, with `every`, all k rows best first."""
    offsets = (ops.arange(batch, dtype="int32") * k)[:, None]  # (batch, 1)
    best = ops.cast(ops.argmax(normalised, axis=-1), "int32")  # (batch,)
    winners = best + offsets[:, 0]  # (batch,) rows of the flat arrays
    # <pad> steps of a finished row already hold 0; nothing follows <end>.
    score = ops.take_along_axis(normalised, best[:, None], axis=1)[:, 0]  # (batch,)
    found = ops.take(sequences, winners, axis=0), score, ops.take(attentions, winners, axis=0)
    if not every:
        return found
    order = ops.cast(ops.argsort(-normalised, axis=-1), "int32")  # (batch, k) best first
    rows = ops.reshape(ops.take(sequences, ops.reshape(order + offsets, (-1,)), axis=0), (batch, k, max_length))
    return (*found, rows, ops.take_along_axis(normalised, order, axis=1))


def sample_search(
    step_fn: StepFn,
    state,
    start_id: int,
    end_id: int,
    max_length: int,
    noise,
    truncate: Callable,
    num_captions: int,
    length_penalty: float = 1.0,
    num_pixels: int = 0,
    process: Process | None = None,
):
    """`num_captions` sampled captions per image; the state is repeated `num_captions` times per image (row b*n + j).

    At step t row r takes the first word whose cumulative probability (under `truncate(logits)`, renormalised)
    passes noise[r, t]. Scores are the captions' log-probabilities under the untruncated model (temperature 1),
    divided by length**length_penalty, so samples can be re-ranked. Returns as `beam_search(n_best=True)`.
    """
    process = process or _identity
    flat = _batch_rows(state)
    batch = flat // num_captions

    def body(t, tokens, state, finished, scores, lengths, sequences, attentions):
        logits, state, attention = step_fn(tokens, state)  # (n, vocab), ..., (n, num_pixels)
        logits = process(logits, sequences, t)
        probs = truncate(logits)  # (n, vocab), zero outside what may be sampled
        cumulative = ops.cumsum(probs, axis=-1)  # (n, vocab)
        threshold = ops.take(noise, t, axis=1)[:, None] * cumulative[:, -1:]  # (n, 1)
        drawn = ops.sum(ops.cast(cumulative <= threshold, "int32"), axis=-1)  # (n,) the first word past the threshold
        drawn = ops.minimum(drawn, logits.shape[-1] - 1)
        next_tokens = ops.where(finished, 0, drawn)  # (n,)
        gained = ops.take_along_axis(ops.log_softmax(logits, axis=-1), next_tokens[:, None], axis=1)[:, 0]  # (n,)
        scores = scores + ops.where(finished, 0.0, gained)
        lengths = lengths + ops.cast(ops.logical_not(finished), "float32")
        attention = ops.where(finished[:, None], 0.0, attention)  # (n, num_pixels)
        sequences = sequences + next_tokens[:, None] * _at(t, max_length, "int32")[None, :]
        attentions = attentions + attention[:, None, :] * _at(t, max_length, "float32")[None, :, None]
        finished = ops.logical_or(finished, ops.equal(next_tokens, end_id))
        return t + 1, next_tokens, state, finished, scores, lengths, sequences, attentions

    loop = _loop(
        flat, start_id, state, max_length, num_pixels, ops.zeros((flat,), "float32"), ops.zeros((flat,), "float32")
    )
    *_, scores, lengths, sequences, attentions = ops.while_loop(
        _not_done(max_length), body, loop, maximum_iterations=max_length
    )
    normalised = ops.reshape(scores / ops.power(ops.maximum(lengths, 1.0), length_penalty), (batch, num_captions))
    return _best_first(normalised, sequences, attentions, batch, num_captions, max_length, True)


def ngram_ban(sequences, t, n: int, vocab: int):
    """(rows, vocab) -1e9 for every word that would repeat an n-gram the row's caption already holds, 0 elsewhere.

    sequences: (rows, max_length) int32, the words written so far (positions < t). The caption's last n-1 words
    are the prefix; every earlier position i where the same n-1 words start bans the word that followed them.
    """
    length = sequences.shape[1]
    starts = length - n + 1  # positions an n-gram can start at
    match = ops.reshape(ops.arange(starts, dtype="int32") + n - 1 < t, (1, starts))  # (1, starts): complete n-grams
    for j in range(n - 1):
        prefix = ops.take(sequences, ops.maximum(t - (n - 1) + j, 0), axis=1)  # (rows,) word j of the prefix
        match = ops.logical_and(match, ops.equal(sequences[:, j : j + starts], prefix[:, None]))  # (rows, starts)
    followers = ops.one_hot(sequences[:, n - 1 : n - 1 + starts], vocab, dtype="float32")  # (rows, starts, vocab)
    banned = ops.max(followers * ops.cast(match, "float32")[:, :, None], axis=1)  # (rows, vocab)
    return banned * -1e9
