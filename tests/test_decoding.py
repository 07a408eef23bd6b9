import keras
import numpy as np
import pytest
from keras import ops

from captioner.config import DecodeConfig, preset
from captioner.data.vocab import Vocabulary
from captioner.errors import CaptionerError
from captioner.generation.decoding import EAGER_BELOW, CaptionGenerator
from captioner.generation.samplers import beam_search, greedy_search
from captioner.models.networks import build_caption_model

pytestmark = pytest.mark.backends  # also run under KERAS_BACKEND=jax by `make test`

START, END, A, B = 1, 2, 3, 4


def markov_step(table):
    """A step function whose next-word distribution depends only on the previous word."""
    log_table = ops.log(ops.convert_to_tensor(np.asarray(table, np.float32)) + 1e-12)

    def step(tokens, state):
        return ops.take(log_table, tokens, axis=0), state, ops.zeros((ops.shape(tokens)[0], 0))

    return step


def _table(after_start, after_a, after_b):
    table = np.full((5, 5), 1e-9)
    table[START], table[A], table[B] = after_start, after_a, after_b
    table[END] = [0, 0, 1, 0, 0]
    return table


TRAP = _table(after_start=[0, 0, 0, 0.6, 0.4], after_a=[0, 0, 0.35, 0.33, 0.32], after_b=[0, 0, 0.99, 0.005, 0.005])


def test_greedy_follows_the_argmax_and_stops_at_end():
    state = (ops.zeros((2, 1)),)
    tokens, scores, attention = greedy_search(markov_step(TRAP), state, START, END, max_length=6)
    assert ops.convert_to_numpy(tokens).tolist() == [[A, END, 0, 0, 0, 0]] * 2
    np.testing.assert_allclose(ops.convert_to_numpy(scores), np.log(0.6 * 0.35), rtol=1e-5)
    assert attention.shape == (2, 6, 0)


def test_beam_search_finds_the_more_likely_caption_greedy_misses():
    state = (ops.zeros((2 * 3, 1)),)
    tokens, scores, _ = beam_search(markov_step(TRAP), state, START, END, max_length=6, beam_size=3)
    assert ops.convert_to_numpy(tokens).tolist() == [[B, END, 0, 0, 0, 0]] * 2
    np.testing.assert_allclose(ops.convert_to_numpy(scores), np.log(0.4 * 0.99) / 2, rtol=1e-4)


def test_beam_search_without_any_end_returns_the_best_unfinished_beam():
    never_ends = _table(after_start=[0, 0, 0, 0.7, 0.3], after_a=[0, 0, 0, 0.9, 0.1], after_b=[0, 0, 0, 0.5, 0.5])
    state = (ops.zeros((4, 1)),)
    tokens, scores, _ = beam_search(markov_step(never_ends), state, START, END, max_length=4, beam_size=2)
    assert ops.convert_to_numpy(tokens).tolist() == [[A, A, A, A]] * 2
    assert np.all(np.isfinite(ops.convert_to_numpy(scores)))


@pytest.fixture(scope="module")
def random_model():
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *[f"w{i}" for i in range(16)]])
    return build_caption_model(preset("tiny").model, len(vocab), 32), vocab


def test_beam_width_one_equals_greedy(random_model):
    model, vocab = random_model
    images = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3)).astype(np.uint8)
    greedy = CaptionGenerator(model, vocab, DecodeConfig(max_length=10, beam_size=1))(images)
    beam = CaptionGenerator(model, vocab, DecodeConfig(max_length=10, beam_size=1, sampler="beam", length_penalty=0.0))(
        images
    )
    np.testing.assert_array_equal(greedy.tokens, beam.tokens)
    # The beam code path itself (k=1 through beam_search) gives the same tokens as greedy.
    grid, pooled = model.encode(images)
    state = model.decoder.initial_state(pooled, grid)

    banned = np.zeros(len(vocab), np.float32)
    banned[[vocab.pad_id, vocab.start_id, vocab.unk_id]] = -1e9  # as CaptionGenerator does

    def step(tokens, state):
        logits, state, attention = model.decoder.step(tokens, state)
        return logits + banned, state, attention

    beam_tokens, _, _ = beam_search(step, state, vocab.start_id, vocab.end_id, 10, beam_size=1)
    np.testing.assert_array_equal(ops.convert_to_numpy(beam_tokens), greedy.tokens)


def test_one_trace_serves_every_batch_size(random_model):
    model, vocab = random_model
    generator = CaptionGenerator(model, vocab, DecodeConfig(max_length=8, beam_size=2))
    for batch in (EAGER_BELOW, 1, 5, 3):  # the first is large enough to trace; the small ones then reuse the trace
        out = generator(np.zeros((batch, 32, 32, 3), np.uint8))
        assert out.tokens.shape == (batch, 8) and len(out.captions) == batch
    assert generator.trace_count == 1


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="the eager shortcut is TensorFlow's (JAX always compiles)"
)
def test_small_batches_searched_eagerly_give_the_traced_captions(overfit_run, tiny_data, beam_size):
    """`caption one.jpg` skips the ~1 s trace: the eager search must give exactly what the traced one does."""
    from captioner.data.images import load_image
    from captioner.run import load_run

    run = load_run(overfit_run)
    paths = sorted((tiny_data / "images").glob("test_*.png"))[: EAGER_BELOW - 1]
    images = np.stack([load_image(p, run.model.encoder.image_size) for p in paths])
    eager = CaptionGenerator(run.model, run.vocab, DecodeConfig(max_length=20, beam_size=beam_size, length_penalty=0.5))
    small = eager(images)
    assert eager.trace_count == 0
    traced = CaptionGenerator(
        run.model, run.vocab, DecodeConfig(max_length=20, beam_size=beam_size, length_penalty=0.5)
    )
    large = traced(np.concatenate([images, images[:1]]))  # EAGER_BELOW images: traced
    assert traced.trace_count == 1
    np.testing.assert_array_equal(small.tokens, large.tokens[: len(images)])
    np.testing.assert_allclose(small.scores, large.scores[: len(images)], rtol=1e-5, atol=1e-6)


def test_beam_size_must_be_positive(random_model):
    model, vocab = random_model
    with pytest.raises(CaptionerError, match="beam size must be at least 1"):
        CaptionGenerator(model, vocab, DecodeConfig(max_length=8, beam_size=0, sampler="beam"))


@pytest.mark.parametrize("beam_size", [1, 3])
def test_unk_pad_and_start_are_never_generated(random_model, beam_size):
    """Even a model that prefers <unk> above every word (as one trained with a vocabulary cut-off can) never
    writes it: the next most likely word is taken."""
    model, vocab = random_model
    bias = model.decoder.output_projection.bias
    saved = ops.convert_to_numpy(bias).copy()
    try:
        boosted = saved.copy()
        boosted[[vocab.unk_id, vocab.pad_id, vocab.start_id]] = 50.0
        bias.assign(boosted)
        images = np.random.default_rng(1).integers(0, 255, (4, 32, 32, 3)).astype(np.uint8)
        grid, pooled = model.encode(images)
        logits, _, _ = model.decoder.step(np.full([4], vocab.start_id), model.decoder.initial_state(pooled, grid))
        assert set(np.argmax(ops.convert_to_numpy(logits), -1).tolist()) <= {
            vocab.unk_id,
            vocab.pad_id,
            vocab.start_id,
        }  # the model's own choice
        out = CaptionGenerator(model, vocab, DecodeConfig(max_length=6, beam_size=beam_size))(images)
        assert not np.isin(out.tokens[:, :1], [vocab.unk_id, vocab.pad_id, vocab.start_id]).any()
        assert not np.isin(out.tokens, [vocab.unk_id, vocab.start_id]).any()
        assert all("<unk>" not in c for c in out.captions)
    finally:
        bias.assign(saved)


def test_beam_search_lists_every_beam_best_first(random_model):
    model, vocab = random_model
    images = np.random.default_rng(2).integers(0, 255, (5, 32, 32, 3)).astype(np.uint8)
    listed = CaptionGenerator(model, vocab, DecodeConfig(max_length=8, beam_size=3))(images)
    assert all(len(b) == 3 for b in listed.beams)
    for beams, caption, score in zip(listed.beams, listed.captions, listed.scores):
        assert beams[0][0] == caption and beams[0][1] == pytest.approx(float(score), abs=1e-5)
        assert [s for _, s in beams] == sorted((s for _, s in beams), reverse=True)
