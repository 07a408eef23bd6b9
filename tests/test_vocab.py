import json

import pytest

from captioner.data.vocab import SPECIAL_TOKENS, Vocabulary, tokenize
from captioner.errors import CaptionerError


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A Red circle, to the LEFT of a square.") == [
        "a",
        "red",
        "circle",
        "to",
        "the",
        "left",
        "of",
        "a",
        "square",
    ]


def test_special_tokens_come_first_and_ids_are_fixed():
    vocab = Vocabulary.build(["a red circle", "a blue circle"])
    assert vocab.words[:4] == list(SPECIAL_TOKENS)
    assert (vocab.pad_id, vocab.start_id, vocab.end_id, vocab.unk_id) == (0, 1, 2, 3)
    assert vocab.words[4:] == ["a", "circle", "blue", "red"]  # by count, ties alphabetical


def test_encode_decode_round_trip():
    vocab = Vocabulary.build(["a small red circle above a big blue square"])
    ids = vocab.encode_caption("A small red circle above a big blue square.")
    assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
    assert vocab.decode(ids) == "a small red circle above a big blue square"
    assert vocab.decode([vocab.start_id, vocab.index["red"], vocab.end_id, vocab.index["blue"]]) == "red"


def test_min_count_maps_rare_words_to_unk():
    vocab = Vocabulary.build(["red circle", "red square"], min_count=2)
    assert "circle" not in vocab.index
    assert vocab.encode("red circle") == [vocab.index["red"], vocab.unk_id]
    assert vocab.unknown_rate(["red circle"]) == 0.5


def test_max_length_cuts_words():
    vocab = Vocabulary.build(["one two three four"])
    assert len(vocab.encode_caption("one two three four", max_length=2)) == 4


def test_json_round_trip(tmp_path):
    vocab = Vocabulary.build(["a red circle"])
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json") == vocab


@pytest.mark.parametrize(
    "payload",
    [{"words": ["<pad>", "<start>", "<end>", "<unk>", "a", "a"]}, {"words": ["a", "b"]}, {"words": "abc"}, []],
)
def test_invalid_vocabulary_files_are_refused(tmp_path, payload):
    (tmp_path / "vocab.json").write_text(json.dumps(payload))
    with pytest.raises(CaptionerError, match="invalid vocabulary"):
        Vocabulary.load(tmp_path / "vocab.json")
