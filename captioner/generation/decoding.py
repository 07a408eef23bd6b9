"""Caption generation: a CaptionModel bound to a sampler (`captioner.generation.samplers`) under one `DecodeConfig`.

`CaptionGenerator` encodes images, repeats each image's decoder state once per row the sampler keeps (beams,
samples), and runs the sampler's search with the model's step function and a logits hook that applies the
constraints (never `<pad>`, `<start>` or `<unk>`; `min_length`; no repeated n-gram). It compiles that once
with the backend's compiler (`captioner.backend.CompiledFunction`: `tf.function` with a batch-polymorphic
signature on TensorFlow, `jax.jit` on JAX); a random sampler's noise is an input of that function, drawn with
numpy from `decode.seed`. Decoding stops on the `<end>` id, never on strings.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from captioner import backend
from captioner.config import DecodeConfig
from captioner.data.vocab import Vocabulary
from captioner.errors import CaptionerError
from captioner.generation.lite import check_limits
from captioner.generation.samplers import BeamSampler, GreedySampler, RandomSampler, Sampler, ngram_ban
from captioner.models.decoder import HARD_CONTEXTS
from captioner.models.networks import CaptionModel

EAGER_BELOW = 8  # TensorFlow: batches this small skip tracing while nothing is traced yet (CaptionGenerator.__call__)


def sampler_name(decode: DecodeConfig) -> str:
    """The search a DecodeConfig asks for ("auto": "beam" when beam_size > 1, else "greedy"), after checking the
    settings every search shares: a contradictory combination is one line. The samplers check their own values."""
    check_limits(decode)
    if decode.hard_context not in HARD_CONTEXTS:
        raise CaptionerError(f"unknown --hard-context '{decode.hard_context}'; choose expectation or argmax")
    name = decode.sampler if decode.sampler != "auto" else ("beam" if decode.beam_size > 1 else "greedy")
    if name not in ("greedy", "beam", "sampling"):
        raise CaptionerError(f"unknown sampler '{decode.sampler}'; choose greedy, beam or sampling")
    if name != "sampling" and (decode.temperature != 1.0 or decode.top_k is not None or decode.top_p is not None):
        raise CaptionerError("--temperature, --top-k and --top-p shape sampling: add --sampler sampling")
    if name == "greedy" and decode.num_captions != 1:
        raise CaptionerError("greedy decoding gives one caption: use --sampler beam or sampling for --num-captions")
    if name == "beam":
        BeamSampler.check(decode.beam_size, decode.num_captions)
    if name == "sampling":
        RandomSampler.check(decode.temperature, decode.top_k, decode.top_p, decode.num_captions)
    return name


def make_sampler(decode: DecodeConfig) -> Sampler:
    """The sampler a DecodeConfig asks for (`sampler_name`), built: its own values checked too."""
    name = sampler_name(decode)
    if name == "greedy":
        return GreedySampler()
    if name == "beam":
        return BeamSampler(decode.beam_size, decode.length_penalty, decode.num_captions)
    return RandomSampler(decode.temperature, decode.top_k, decode.top_p, decode.num_captions, decode.length_penalty)


@dataclass
class Generated:
    """Generated captions of a batch, as numpy arrays and strings."""

    tokens: np.ndarray  # (batch, max_length) int32
    scores: np.ndarray  # (batch,)
    attention: np.ndarray  # (batch, max_length, num_pixels)
    captions: list[str]
    # beam search or sampling: every row's caption and score, best first
    beams: list[list[tuple[str, float]]] | None = None

    def candidates(self, count: int) -> list[list[tuple[str, float]]]:
        """The `count` best captions of each image with their scores (the best alone for greedy)."""
        if self.beams is None:
            return [[(caption, float(score))] for caption, score in zip(self.captions, self.scores)]
        return [rows[:count] for rows in self.beams]


class CaptionGenerator:
    """Captions for batches of images from a CaptionModel, as a DecodeConfig says.

    Args:
        model: CaptionModel.
        vocab: Vocabulary.
        decode: DecodeConfig. The sampler and its settings, max_length, the constraints and the seed.
    """

    def __init__(self, model: CaptionModel, vocab: Vocabulary, decode: DecodeConfig):
        self.model = model
        self.vocab = vocab
        self.decode = decode
        self.sampler = make_sampler(decode)
        if decode.hard_context != "expectation" and not model.decoder.hard:
            raise CaptionerError(
                f"--hard-context {decode.hard_context} is for hard-attention runs; this run's decoder reads "
                f"{'soft attention' if model.decoder.uses_attention else 'no attention'}"
            )
        self.max_length = int(decode.max_length)
        size = model.encoder.image_size
        specs = [((None, size, size, 3), "uint8")]
        if self.sampler.needs_noise:
            specs.append(((None, self.sampler.rows_per_image, self.max_length), "float32"))
        # One trace serves every batch size (JAX: a handful of padded sizes); `trace_count` lets tests check it.
        self._generate = backend.CompiledFunction(self.search, model.variables, specs)
        self._calls = 0  # a random sampler's noise differs from call to call, reproducibly from decode.seed

    @property
    def beam_size(self) -> int:
        return self.sampler.rows_per_image

    @property
    def trace_count(self) -> int:
        return self._generate.trace_count

    def _process(self):
        """The logits hook: bans (<pad>, <start>, <unk> always; <end> before min_length; repeated n-grams)."""
        vocab = len(self.vocab)
        banned = np.zeros(vocab, np.float32)
        banned[[self.vocab.pad_id, self.vocab.start_id, self.vocab.unk_id]] = -1e9
        banned = ops.convert_to_tensor(banned)  # (vocab,)
        end = ops.convert_to_tensor(np.eye(vocab, dtype=np.float32)[self.vocab.end_id] * -1e9)  # (vocab,)
        min_length, n = self.decode.min_length, self.decode.no_repeat_ngram

        def process(logits, sequences, t):
            logits = logits + banned  # (rows, vocab)
            if min_length:  # <end> is word t + 1: it may come once min_length words are written
                logits = logits + ops.cast(t < min_length, "float32") * end
            if n:
                logits = logits + ngram_ban(sequences, t, n, vocab)
            return logits

        return process

    def search(self, images, noise=None):
        """Tokens, scores, attention and every row best first of a uint8 image batch, as backend tensors
        (traceable: `export` uses it)."""
        grid, pooled = self.model.encode(images)  # (batch, num_pixels, encoder_dim), (batch, pooled_dim)
        return self.search_encoded(grid, pooled, noise)

    def search_encoded(self, grid, pooled, noise=None):
        """`search` from encoder outputs (a feature cache's, or training's): grid (batch, num_pixels, encoder_dim),
        pooled (batch, pooled_dim); `noise` (batch, rows, max_length) for a random sampler (`sampler.noise`)."""
        decoder = self.model.decoder
        state = decoder.initial_state(pooled, grid)
        memory = decoder.memory(grid)  # attended features, projected once per image
        num_pixels = self.model.encoder.num_pixels if decoder.uses_attention else 0
        rows = self.sampler.rows_per_image
        if rows > 1:
            # Rows of one image share its memory: repeat once here; reordering beams never moves rows across images.
            state, memory = keras.tree.map_structure(lambda s: ops.repeat(s, rows, axis=0), (state, memory))

        def step_fn(tokens, state):
            # (n, vocab), ..., (n, num_pixels)
            logits, state, attention = decoder.step(tokens, state, memory, self.decode.hard_context)
            # Scores and softmax in float32 whatever the compute precision (captioner.precision).
            return ops.cast(logits, "float32"), state, ops.cast(attention, "float32")

        return self.sampler.search(
            step_fn, state, self.vocab.start_id, self.vocab.end_id, self.max_length, num_pixels, self._process(), noise
        )

    def __call__(self, images: np.ndarray) -> Generated:
        """Captions for a uint8 batch (batch, size, size, 3).

        On TensorFlow, until the search has been traced, a batch of fewer than EAGER_BELOW images is searched
        eagerly: tracing costs about a second, more than an eager search of a few images (`captioner caption
        photo.jpg`). The same operations run either way (a test checks the captions are equal).
        """
        images = np.asarray(images, np.uint8)  # (batch, size, size, 3)
        inputs = [images]
        if self.sampler.needs_noise:
            inputs.append(self.sampler.noise(len(images), self.max_length, self.decode.seed + self._calls))
            self._calls += 1
        small = self.trace_count == 0 and len(images) < EAGER_BELOW and backend.name() == "tensorflow"
        tokens, scores, attention, every, every_scores = (self._generate.eager if small else self._generate)(*inputs)
        beams = None
        if self.sampler.rows_per_image > 1:  # (batch, rows, max_length), (batch, rows)
            beams = [
                [(self.vocab.decode(row), float(score)) for row, score in zip(rows, image_scores)]
                for rows, image_scores in zip(every, every_scores)
            ]
        return Generated(tokens, scores, attention, [self.vocab.decode(row) for row in tokens], beams)
