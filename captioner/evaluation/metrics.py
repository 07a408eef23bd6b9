"""Caption metrics on generated captions against all references, and VQA accuracy.

BLEU is the cumulative corpus BLEU-n of nltk (`corpus_bleu`, uniform weights, no smoothing) on word lists
from `captioner.data.vocab.tokenize` (lower-cased, punctuation dropped, split on non-alphanumerics).
VQA accuracy follows the official evaluation (Antol et al. 2015): min(#humans who gave the answer / 3, 1),
averaged over the ten leave-one-annotator-out subsets, on answers normalised by `normalize_answer`.
"""

from __future__ import annotations

import collections
import math
import warnings
from collections.abc import Sequence
from typing import Any

from nltk.translate.bleu_score import corpus_bleu

from captioner.data.vocab import normalize_answer, tokenize

BLEU_WEIGHTS = [(1.0,), (0.5, 0.5), (1 / 3, 1 / 3, 1 / 3), (0.25, 0.25, 0.25, 0.25)]


def bleu_scores(references: Sequence[Sequence[Sequence[str]]], hypotheses: Sequence[Sequence[str]]) -> dict[str, float]:
    """Corpus BLEU-1..4.

    Args:
        references: per image, a list of reference token lists.
        hypotheses: per image, one generated token list.

    Returns:
        {"bleu1": ..., "bleu4": ...} as fractions in [0, 1].
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} reference sets for {len(hypotheses)} hypotheses")
    if not hypotheses:
        raise ValueError("no captions to score")
    with warnings.catch_warnings():
        # nltk warns when an n-gram order has no match; BLEU-n is then 0, which is the answer we want.
        warnings.filterwarnings("ignore", message=r"\s*The hypothesis contains 0 counts", category=UserWarning)
        scores = corpus_bleu(
            [list(map(list, refs)) for refs in references], [list(h) for h in hypotheses], weights=BLEU_WEIGHTS
        )
    return {f"bleu{n}": float(s) for n, s in enumerate(scores, start=1)}


def leave_one_out(groups: Sequence[Sequence[Any]], held_out: int = 0) -> tuple[list[list[Any]], list[Any]]:
    """(the other items of each group, item `held_out` of each group), for the groups that have another item."""
    usable = [group for group in groups if len(group) > max(held_out, 1)]
    return [[x for i, x in enumerate(group) if i != held_out] for group in usable], [
        group[held_out] for group in usable
    ]


def oracle_bleu(references: Sequence[Sequence[Sequence[str]]], held_out: int = 0) -> dict[str, float]:
    """Human agreement on tokens: reference `held_out` of each image scored against its other references."""
    return bleu_scores(*leave_one_out(references, held_out))


def distinct_share(captions: Sequence[str]) -> float:
    """Distinct captions / captions: 1/N when a model gives every image the same caption."""
    return len(set(captions)) / len(captions) if captions else 0.0


def diversity(captions: Sequence[str], top: int = 10) -> dict[str, float]:
    """How generic a set of captions is, one caption per image (the known weakness of these models).

    Returns:
        distinct_captions: distinct captions / captions; distinct_words: words used at least once;
        top{top}_share: share of images whose caption is one of the `top` most common captions;
        repeated_bigram_share: share of captions that say a word pair twice ("a bike on a bike", but also
        "in a ... in a", which people write too: compare with the references' own figure).
    """
    counts = collections.Counter(captions)
    words = [tokenize(c) for c in captions]
    repeats = sum(len(set(zip(w, w[1:]))) < len(w) - 1 for w in words)
    return {
        "distinct_captions": distinct_share(captions),
        "distinct_words": len({w for c in words for w in c}),
        f"top{top}_share": sum(n for _, n in counts.most_common(top)) / len(captions) if captions else 0.0,
        "repeated_bigram_share": repeats / len(captions) if captions else 0.0,
    }


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """Accuracy of one predicted answer against every annotator's answer.

    With one reference answer this is exact match (after normalisation). With n > 1 (VQA: ten) it is the
    mean over the n subsets that leave one annotator out of min(matches in the subset / 3, 1): three matching
    annotators out of ten give 0.9, not 1.
    """
    predicted = normalize_answer(prediction)
    given = [normalize_answer(a) for a in answers]
    if len(given) == 1:
        return float(predicted == given[0])
    matches = sum(a == predicted for a in given)
    return sum(min((matches - (a == predicted)) / 3.0, 1.0) for a in given) / len(given)


def accuracy_table(
    records: Sequence[Any], predictions: Sequence[str], groups: dict[str, Sequence[str]] | None = None
) -> dict[str, Any]:
    """Overall VQA accuracy with its 95% interval, and accuracy per answer type, per question type and per any
    other grouping given.

    Args:
        records: QARecord-like objects with `answers`, `answer_type`, `question_type`.
        predictions: one answer per record.
        groups: {"by_NAME": one group label per record}, e.g. whether each question's photo was seen in training.

    The interval is the normal approximation, 1.96 standard errors of the mean per-question score (for 0/1
    scores, 1.96 * sqrt(p (1 - p) / n): +-2.2 points at 50% on 2,022 questions).
    """
    if len(records) != len(predictions):
        raise ValueError(f"{len(records)} questions for {len(predictions)} predictions")
    scores = [vqa_accuracy(p, r.answers) for r, p in zip(records, predictions)]
    result: dict[str, Any] = {"accuracy": _mean(scores), "interval_95": _interval_95(scores), "questions": len(scores)}
    labels = {
        key: [getattr(r, attribute) for r in records]
        for key, attribute in (("by_answer_type", "answer_type"), ("by_question_type", "question_type"))
    }
    for key, keys in {**labels, **(groups or {})}.items():
        grouped: dict[str, list[float]] = {}
        for label, value in zip(keys, scores):
            grouped.setdefault(label, []).append(value)
        result[key] = {
            name: {"accuracy": _mean(v), "interval_95": _interval_95(v), "questions": len(v)}
            for name, v in sorted(grouped.items())
        }
    return result


def _interval_95(scores: Sequence[float]) -> float:
    """Half-width of the normal-approximation 95% interval of the mean of `scores`."""
    if len(scores) < 2:
        return 0.0
    mean = _mean(scores)
    return 1.96 * math.sqrt(sum((x - mean) ** 2 for x in scores) / len(scores) / len(scores))


def blind_baselines(train_records: Sequence[Any], records: Sequence[Any]) -> dict[str, float]:
    """Accuracies that need no image, for context (Antol et al. 2015, "prior" and "per Q-type prior"):

    - always_yes: answer "yes" to everything;
    - most_frequent: the most frequent training answer, to everything;
    - question_prior: the most frequent training answer to this exact question text (else most_frequent);
    - photo_prior: the most frequent training answer to any question about this photo (else most_frequent): no
      pixels and no question, only the photo's identity; where a split is by question, not by photo, this
      measures how much of an accuracy can come from remembering photos.
    """
    overall = collections.Counter(r.answer for r in train_records)
    top = overall.most_common(1)[0][0] if overall else "yes"
    by_text: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in train_records:
        by_text[_question_key(r.question)][r.answer] += 1
    prior = [
        by_text[_question_key(r.question)].most_common(1)[0][0] if _question_key(r.question) in by_text else top
        for r in records
    ]
    by_photo: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in train_records:
        by_photo[photo_key(r.image)][r.answer] += 1
    photo = [
        by_photo[photo_key(r.image)].most_common(1)[0][0] if photo_key(r.image) in by_photo else top for r in records
    ]
    return {
        "always_yes": accuracy_table(records, ["yes"] * len(records))["accuracy"],
        "most_frequent": accuracy_table(records, [top] * len(records))["accuracy"],
        "question_prior": accuracy_table(records, prior)["accuracy"],
        "photo_prior": accuracy_table(records, photo)["accuracy"],
    }


def train_overlap(train_records: Sequence[Any], records: Sequence[Any]) -> dict[str, list[str]]:
    """Groups for `accuracy_table` where a split is by question, not by photo: per record, whether train holds its
    photo ("by_photo") and, crossed with that, whether train asked its exact question text ("by_photo_and_question").
    On VQA v2 the second matters: each question is paired with a similar photo whose answer differs, so where the
    twin is in train its answer is usually the wrong one here (docs/vqa.md, "VQA on photographs")."""
    photos = {photo_key(r.image) for r in train_records}
    texts = {_question_key(r.question) for r in train_records}
    seen = [photo_key(r.image) in photos for r in records]
    asked = [_question_key(r.question) in texts for r in records]
    return {
        "by_photo": ["seen in training" if s else "unseen" for s in seen],
        "by_photo_and_question": [
            f"{'seen' if s else 'unseen'} photo, {'question asked in training' if a else 'new question'}"
            for s, a in zip(seen, asked)
        ],
    }


def photo_key(image: str) -> str:
    """A photo's identity across splits and folders: its file name."""
    return image.replace("\\", "/").rsplit("/", 1)[-1]


def _question_key(question: str) -> str:
    """A question's text as the model reads it: its words (`tokenize`), "Is it red?" = "is it red ?"."""
    return " ".join(tokenize(question))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


TOKENIZATIONS = {
    "words": "captioner.data.vocab.tokenize: lower-case, alphanumeric words, punctuation dropped",
    "whitespace": 'lower-case, " ." removed, split on whitespace (the usual Flickr8k reference convention)',
}


def tokenize_for_scoring(text: str, tokenization: str = "words") -> list[str]:
    """Token list for BLEU/CIDEr; BLEU depends on this choice, so results name it (TOKENIZATIONS)."""
    if tokenization == "words":
        return tokenize(text)
    if tokenization == "whitespace":
        return text.lower().replace(" .", "").split()
    raise ValueError(f"unknown tokenization '{tokenization}'; use one of {sorted(TOKENIZATIONS)}")


def coco_scores(
    references: Sequence[Sequence[Sequence[str]]], hypotheses: Sequence[Sequence[str]], meteor: bool = True
) -> dict[str, Any] | None:
    """The COCO caption metrics of pycocoevalcap on already tokenised text: BLEU-1..4, METEOR, ROUGE-L, CIDEr.

    Returns None when pycocoevalcap is not installed. METEOR runs a Java program: without a Java runtime
    (or with meteor=False) it is reported as None, never a crash.
    """
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError:
        return None
    if len(references) != len(hypotheses) or not hypotheses:
        raise ValueError(f"{len(references)} reference sets for {len(hypotheses)} hypotheses")
    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(h)] for i, h in enumerate(hypotheses)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    result: dict[str, Any] = {f"bleu{n}": float(b) for n, b in enumerate(bleu, start=1)}
    result["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    result["cider"] = float(Cider().compute_score(gts, res)[0])
    result["meteor"] = _meteor(gts, res) if meteor else None
    return result


def _meteor(gts, res) -> float | None:
    import shutil

    if shutil.which("java") is None:
        return None
    try:
        from pycocoevalcap.meteor.meteor import Meteor

        scorer = Meteor()
        try:
            return float(scorer.compute_score(gts, res)[0])
        finally:  # the Java process would otherwise live until the interpreter exits
            scorer.meteor_p.kill()
            scorer.meteor_p.wait()
    except Exception:  # a broken Java install or jar: METEOR unavailable, the other metrics stand
        return None


def human_agreement(
    captions: Sequence[Sequence[str]], tokenization: str = "words", held_out: int = 0, meteor: bool = False
) -> dict[str, Any]:
    """Human agreement: caption `held_out` of each image scored against the image's other captions, with nltk
    and (when installed) pycocoevalcap. On the 1,000 official Flickr8k test images with "whitespace"
    tokens this gives BLEU-1..4 0.634 / 0.443 / 0.304 / 0.208 and CIDEr 0.782.
    """
    return text_scores(*leave_one_out(captions, held_out), tokenization, meteor)


def text_scores(
    references: Sequence[Sequence[str]], hypotheses: Sequence[str], tokenization: str = "words", meteor: bool = False
) -> dict[str, Any]:
    """nltk corpus BLEU-1..4 and (when installed) the pycocoevalcap metrics of caption strings, tokenised one way."""
    refs = [[tokenize_for_scoring(r, tokenization) for r in group] for group in references]
    hyps = [tokenize_for_scoring(h, tokenization) for h in hypotheses]
    return {
        "images": len(hyps),
        "tokenization": tokenization,
        "nltk": bleu_scores(refs, hyps),
        "coco": coco_scores(refs, hyps, meteor=meteor),
    }
