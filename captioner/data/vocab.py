"""Word <-> id mapping with `<pad>`=0, `<start>`, `<end>`, `<unk>`; tokenisation; JSON (never pickle)."""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from captioner.errors import CaptionerError
from captioner.fileio import write_json

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
MAX_VOCAB_SIZE = 1_000_000  # a vocabulary file larger than this is refused as corrupt or hostile
_TOKEN = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    """Lower-case and split into alphanumeric words; punctuation is dropped ("a dog's ball." -> a, dog, s, ball)."""
    return _TOKEN.findall(text.lower())


class _StoredList:
    """JSON round trip (never pickle) of a list of strings kept in the attribute named `json_key`."""

    json_key = "words"
    description = "vocabulary"

    def to_json(self) -> dict:
        return {"type": f"captioner.{type(self).__name__}", self.json_key: getattr(self, self.json_key)}

    @classmethod
    def from_json(cls, payload: dict):
        items = payload.get(cls.json_key) if isinstance(payload, dict) else None
        if not isinstance(items, list) or not all(isinstance(w, str) for w in items):
            raise ValueError(f"expected {{'{cls.json_key}': [str, ...]}}")
        if len(items) > MAX_VOCAB_SIZE:
            raise ValueError(f"{len(items)} {cls.json_key} is more than the {MAX_VOCAB_SIZE} allowed")
        return cls(items)

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path):
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise CaptionerError(f"missing {cls.description} file {path}") from None
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            raise CaptionerError(f"invalid {cls.description} file {path}: {exc}") from None


class Vocabulary(_StoredList):
    """An ordered word list; a word's id is its position. Ids 0-3 are the special tokens.

    Args:
        words: Sequence[str]. All tokens, special tokens first, in id order.
    """

    def __init__(self, words: Sequence[str]):
        words = list(words)
        if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}")
        if len(set(words)) != len(words):
            duplicates = sorted(w for w, n in collections.Counter(words).items() if n > 1)
            raise ValueError(f"duplicate words in vocabulary: {duplicates[:5]}")
        self.words = words
        self.index = {w: i for i, w in enumerate(words)}

    pad_id, start_id, end_id, unk_id = 0, 1, 2, 3

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1, max_size: int | None = None) -> Vocabulary:
        """Words seen at least `min_count` times, most frequent first (ties alphabetical: deterministic)."""
        counts = collections.Counter(word for text in texts for word in tokenize(text))
        kept = sorted(
            (w for w, n in counts.items() if n >= min_count and w not in SPECIAL_TOKENS), key=lambda w: (-counts[w], w)
        )
        if max_size is not None:
            kept = kept[: max(0, max_size - len(SPECIAL_TOKENS))]
        return cls(list(SPECIAL_TOKENS) + kept)

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.words == other.words

    def encode(self, text: str, max_length: int | None = None) -> list[int]:
        """Word ids of `text` (no special tokens), unknown words as `<unk>`, cut to `max_length` words."""
        ids = [self.index.get(w, self.unk_id) for w in tokenize(text)]
        return ids[:max_length] if max_length is not None else ids

    def encode_caption(self, text: str, max_length: int | None = None) -> list[int]:
        """`<start> w1 ... wn <end>` as ids."""
        return [self.start_id, *self.encode(text, max_length), self.end_id]

    def decode(self, ids: Iterable[int]) -> str:
        """Words up to the first `<end>`; `<pad>` and `<start>` are skipped."""
        words = []
        for i in ids:
            i = int(i)
            if i == self.end_id:
                break
            if i in (self.pad_id, self.start_id):
                continue
            words.append(self.words[i] if 0 <= i < len(self.words) else UNK)
        return " ".join(words)

    def words_through_end(self, ids: Iterable[int]) -> list[str]:
        """Every word of a generated row up to and including `<end>` (what an attention picture labels)."""
        words = []
        for i in ids:
            words.append(self.words[int(i)])
            if int(i) == self.end_id:
                break
        return words

    def unknown_rate(self, texts: Iterable[str]) -> float:
        """Share of word tokens in `texts` that map to `<unk>`."""
        total = unknown = 0
        for text in texts:
            for word in tokenize(text):
                total += 1
                unknown += word not in self.index
        return unknown / total if total else 0.0


OTHER_ANSWER = "<other>"


class AnswerVocabulary(_StoredList):
    """The classes of a VQA classifier: the most frequent training answers; id 0, `<other>`, stands for every
    answer outside them. The loss ignores `<other>` targets and the classifier never predicts it.

    Args:
        answers: Sequence[str]. `<other>` first, then the answers in id order.
    """

    other_id = 0
    json_key = "answers"
    description = "answer vocabulary"

    def __init__(self, answers: Sequence[str]):
        answers = list(answers)
        if not answers or answers[0] != OTHER_ANSWER:
            raise ValueError(f"an answer vocabulary must start with {OTHER_ANSWER}")
        if len(set(answers)) != len(answers):
            duplicates = sorted(a for a, n in collections.Counter(answers).items() if n > 1)
            raise ValueError(f"duplicate answers in vocabulary: {duplicates[:5]}")
        self.answers = answers
        self.index = {a: i for i, a in enumerate(answers)}

    @classmethod
    def build(cls, answers: Iterable[str], max_size: int = 1000) -> AnswerVocabulary:
        """The `max_size` most frequent answers (ties alphabetical), after `normalize_answer`."""
        counts = collections.Counter(normalize_answer(a) for a in answers)
        counts.pop(OTHER_ANSWER, None)
        kept = sorted(counts, key=lambda a: (-counts[a], a))[:max_size]
        return cls([OTHER_ANSWER, *kept])

    def __len__(self) -> int:
        return len(self.answers)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AnswerVocabulary) and self.answers == other.answers

    def encode(self, answer: str) -> int:
        return self.index.get(normalize_answer(answer), self.other_id)

    def coverage(self, answers: Iterable[str]) -> float:
        """Share of `answers` that are classes (not `<other>`): the accuracy a perfect classifier could reach."""
        answers = list(answers)
        return sum(self.encode(a) != self.other_id for a in answers) / len(answers) if answers else 0.0


_ANSWER_PUNCTUATION = re.compile(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$|~]")
_PERIOD = re.compile(r"(?<!\d)\.(?!\d)")
_DIGITS = {
    w: str(i)
    for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))
}
_ARTICLES = {"a", "an", "the"}


def normalize_answer(answer: str) -> str:
    """VQA's answer processing, abridged: lower case, punctuation removed (a period only outside numbers),
    number words as digits, articles dropped ("Two dogs." -> "2 dogs"). Applied to predictions and references."""
    text = _PERIOD.sub("", _ANSWER_PUNCTUATION.sub("", answer.lower().replace("\n", " ").replace("\t", " ")))
    words = [_DIGITS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)
