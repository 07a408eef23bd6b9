"""Samplers as objects (greedy, beam, sampling), the logits hook (bans, minimum length, no repeated n-gram), and the
decoding flags of the CLI."""

import json

import numpy as np
import pytest
from keras import ops

from captioner.cli import main
from captioner.config import DecodeConfig, preset
from captioner.data.vocab import Vocabulary
from captioner.errors import CaptionerError
from captioner.generation.decoding import CaptionGenerator, make_sampler
from captioner.generation.samplers import (
    BeamSampler,
    GreedySampler,
    RandomSampler,
    get_sampler,
    greedy_search,
    ngram_ban,
)
from captioner.models.networks import build_caption_model

pytestmark = pytest.mark.backends  # also run under KERAS_BACKEND=jax by `make test`

START, END, A, B, C = 1, 2, 3, 4, 5


@pytest.fixture(scope="module")
def random_model():
    import keras

    keras.utils.set_random_seed(3)
    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", *[f"w{i}" for i in range(16)]])
    return build_caption_model(preset("tiny").model, len(vocab), 32), vocab


def _images(count, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (count, 32, 32, 3)).astype(np.uint8)


def _generate(model, vocab, images, **decode):
    return CaptionGenerator(model, vocab, DecodeConfig(max_length=12, **decode))(images)


@pytest.mark.parametrize("settings", [{"temperature": 0.0}, {"top_k": 1}, {"top_p": 1e-6}])
def test_degenerate_sampling_equals_greedy(random_model, settings):
    """Temperature 0, top-k 1 and a tiny top-p all leave only the most likely word: greedy, token for token."""
    model, vocab = random_model
    images = _images(6)
    greedy = _generate(model, vocab, images, beam_size=1)
    sampled = _generate(model, vocab, images, sampler="sampling", seed=5, **settings)
    np.testing.assert_array_equal(sampled.tokens, greedy.tokens)
    np.testing.assert_allclose(
        sampled.scores, greedy.scores / np.maximum((greedy.tokens > 0).sum(1), 1), rtol=1e-4, atol=1e-5
    )


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    probs = np.array([[0.05, 0.5, 0.15, 0.3]], np.float32)  # ranked: word 1 (0.5), 3 (0.3), 2 (0.15), 0 (0.05)
    logits = ops.convert_to_tensor(np.log(probs))
    for p, kept in [
        (0.4, {1}),
        (0.5, {1}),
        (0.75, {1, 3}),
        (0.9, {1, 2, 3}),
        (0.96, {0, 1, 2, 3}),
        (1.0, {0, 1, 2, 3}),
    ]:
        out = ops.convert_to_numpy(RandomSampler(top_p=p).truncate(logits))[0]
        assert set(np.flatnonzero(out)) == kept, p
        np.testing.assert_allclose(out[list(kept)], probs[0, list(kept)], rtol=1e-5)  # kept words keep their mass
    top2 = ops.convert_to_numpy(RandomSampler(top_k=2).truncate(logits))[0]
    assert set(np.flatnonzero(top2)) == {1, 3}


def test_the_same_seed_gives_the_same_samples_and_the_samples_differ(random_model):
    model, vocab = random_model
    images = _images(3)
    settings = dict(sampler="sampling", temperature=1.5, num_captions=5, seed=11)
    first, again = _generate(model, vocab, images, **settings), _generate(model, vocab, images, **settings)
    assert first.beams == again.beams
    assert all(len(rows) == 5 for rows in first.beams)
    assert all(len({c for c, _ in rows}) > 1 for rows in first.beams)  # N samples of one image differ
    other = _generate(model, vocab, images, **{**settings, "seed": 12})
    assert other.beams != first.beams
    for rows, caption in zip(first.beams, first.captions):  # best first, the best is the caption
        assert rows[0][0] == caption and [s for _, s in rows] == sorted((s for _, s in rows), reverse=True)


def test_a_generator_called_twice_draws_new_samples_reproducibly(random_model):
    model, vocab = random_model
    decode = DecodeConfig(max_length=12, sampler="sampling", temperature=1.5, num_captions=4, seed=1)
    one, two = CaptionGenerator(model, vocab, decode), CaptionGenerator(model, vocab, decode)
    images = _images(2)
    calls_one = [one(images).beams for _ in range(2)]
    assert calls_one[0] != calls_one[1]  # the second call does not repeat the first's samples
    assert [two(images).beams for _ in range(2)] == calls_one  # but a fresh generator repeats the sequence


def markov(table):
    log_table = ops.log(ops.convert_to_tensor(np.asarray(table, np.float32)) + 1e-12)

    def step(tokens, state):
        return ops.take(log_table, tokens, axis=0), state, ops.zeros((ops.shape(tokens)[0], 0))

    return step


def _trigrams(row):
    words = [int(w) for w in row if w > 0]
    return [tuple(words[i : i + 3]) for i in range(len(words) - 2)]


def test_a_banned_trigram_never_appears():
    """A model that loops "a b a b ..." repeats trigrams; with the ban on, no trigram occurs twice."""
    table = np.full((6, 6), 1e-3)
    table[START, A] = table[A, B] = table[B, A] = 1.0
    table[A, C] = table[B, C] = table[C, A] = 0.5
    state = ops.zeros((2, 1))
    plain, _, _ = greedy_search(markov(table), state, START, END, max_length=9)
    # it does repeat
    assert len(set(_trigrams(ops.convert_to_numpy(plain)[0]))) < len(_trigrams(ops.convert_to_numpy(plain)[0]))

    def process(logits, sequences, t):
        return logits + ngram_ban(sequences, t, 3, 6)

    banned, _, _ = greedy_search(markov(table), state, START, END, max_length=9, process=process)
    for row in ops.convert_to_numpy(banned):
        grams = _trigrams(row)
        assert len(grams) >= 4 and len(set(grams)) == len(grams), row


def test_no_repeated_trigram_and_min_length_through_the_generator(random_model):
    model, vocab = random_model
    images = _images(8, seed=4)
    out = _generate(model, vocab, images, beam_size=3, no_repeat_ngram=3, min_length=5)
    for row in out.tokens:
        grams = _trigrams(row)
        assert len(set(grams)) == len(grams)
        assert int((row > 0).sum()) - int(vocab.end_id in row) >= 5  # at least five words before <end>


def test_samplers_round_trip_through_their_config():
    for sampler in (GreedySampler(), BeamSampler(4, 0.5, 2), RandomSampler(0.7, top_k=20, top_p=0.9, num_captions=3)):
        config = json.loads(json.dumps(sampler.get_config()))
        assert get_sampler(config) == sampler
    assert get_sampler("beam") == BeamSampler()
    assert make_sampler(DecodeConfig(beam_size=1)) == GreedySampler()
    assert make_sampler(DecodeConfig(beam_size=3, length_penalty=0.5)) == BeamSampler(3, 0.5)


@pytest.mark.parametrize(
    "decode, message",
    [
        (
            {"sampler": "sampling", "temperature": 0.0, "top_p": 0.9},
            "--temperature 0 always takes the most likely word",
        ),
        ({"sampler": "sampling", "top_k": 0}, "--top-k must be at least 1"),
        ({"sampler": "sampling", "top_p": 1.5}, "--top-p must be in \\(0, 1\\]"),
        (
            {"sampler": "beam", "beam_size": 3, "num_captions": 5},
            "--num-captions 5 is more than the beam holds \\(3\\)",
        ),
        ({"beam_size": 3, "temperature": 0.7}, "add --sampler sampling"),
        ({"sampler": "greedy", "num_captions": 2}, "greedy decoding gives one caption"),
    ],
)
def test_contradictory_settings_are_one_line(decode, message):
    with pytest.raises(CaptionerError, match=message):
        make_sampler(DecodeConfig(**decode))


def test_cli_decoding_flags(overfit_run, tiny_data, capsys):
    images = sorted(str(p) for p in (tiny_data / "images").glob("test_*.png"))[:2]
    assert (
        main(
            [
                "caption",
                "--run",
                str(overfit_run),
                "--sampler",
                "sampling",
                "--temperature",
                "1.5",
                "--num-captions",
                "3",
                "--seed",
                "4",
                "--json",
                *images,
            ]
        )
        == 0
    )
    results = json.loads(capsys.readouterr().out)
    assert [len(r["candidates"]) for r in results] == [3, 3]
    assert all(r["candidates"][0]["caption"] == r["caption"] for r in results)
    for flags, message in [
        (["--sampler", "sampling", "--temperature", "0", "--top-p", "0.9"], "--temperature 0"),
        (["--sampler", "sampling", "--top-k", "0"], "--top-k must be at least 1"),
        (["--sampler", "sampling", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--beam-size", "2", "--num-captions", "3"], "--num-captions 3 is more than the beam holds (2)"),
        (["--no-repeat-ngram", "1"], "--no-repeat-ngram"),
    ]:
        assert main(["caption", "--run", str(overfit_run), *flags, images[0]]) == 2, flags
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, (flags, err)


def test_evaluate_records_the_sampler_under_its_own_key(overfit_run, capsys):
    assert (
        main(
            [
                "evaluate",
                "--run",
                str(overfit_run),
                "--split",
                "test",
                "--max-images",
                "4",
                "--sampler",
                "sampling",
                "--temperature",
                "0.7",
                "--top-p",
                "0.9",
                "--num-captions",
                "2",
            ]
        )
        == 0
    )
    assert "sampling (temperature 0.7, top-p 0.9; best of 2, seed 0)" in capsys.readouterr().out
    metrics = json.loads((overfit_run / "metrics.json").read_text())
    assert "eval_test_sampling_t0.7_p0.9_n2_seed0" in metrics


def test_search_from_encoder_outputs_equals_search_from_pixels(random_model):
    """Training code (self-critical sampling) starts from encoder outputs: the same captions as from pixels."""
    model, vocab = random_model
    images = _images(3)
    generator = CaptionGenerator(model, vocab, DecodeConfig(max_length=12, sampler="sampling", num_captions=2, seed=2))
    noise = generator.sampler.noise(3, 12, seed=2)
    from_pixels = generator.search(images, noise)
    grid, pooled = model.encode(images)
    from_outputs = generator.search_encoded(grid, pooled, noise)
    for a, b in zip(from_pixels, from_outputs):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-5, atol=1e-5)
