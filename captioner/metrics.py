"""Caption metrics on generated captions against all references.

BLEU is the cumulative corpus BLEU-n of nltk (`corpus_bleu`, uniform weights, no smoothing) on word lists
from `captioner.vocab.tokenize` (lower-cased, punctuation dropped, split on non-alphanumerics).
"""

from __future__ import annotations

import warnings
from typing import Sequence

from nltk.translate.bleu_score import corpus_bleu

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
        scores = corpus_bleu([list(map(list, refs)) for refs in references], [list(h) for h in hypotheses], weights=BLEU_WEIGHTS)
    return {f"bleu{n}": float(s) for n, s in enumerate(scores, start=1)}


def oracle_bleu(references: Sequence[Sequence[Sequence[str]]], held_out: int = 0) -> dict[str, float]:
    """Human agreement: reference `held_out` of each image scored against that image's other references."""
    usable = [refs for refs in references if len(refs) > max(held_out, 1)]
    hypotheses = [refs[held_out] for refs in usable]
    others = [[r for i, r in enumerate(refs) if i != held_out] for refs in usable]
    return bleu_scores(others, hypotheses)


def distinct_share(captions: Sequence[str]) -> float:
    """Distinct captions / captions: 1/N when a model gives every image the same caption."""
    return len(set(captions)) / len(captions) if captions else 0.0
