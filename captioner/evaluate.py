"""Decode a split with a trained run and score the generated captions (never teacher-forced output)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from captioner.datasets import CaptionRecord, load_split
from captioner.decoding import CaptionGenerator
from captioner.fileio import write_json
from captioner.metrics import bleu_scores, distinct_share, oracle_bleu
from captioner.preprocessing import image_dataset
from captioner.run import Run, update_metrics
from captioner.vocab import tokenize


def generate_captions(generator: CaptionGenerator, paths: Sequence[str], batch_size: int = 256) -> list[str]:
    """Captions for image files, decoded in parallel and generated in batches."""
    captions: list[str] = []
    for images in image_dataset(paths, generator.model.encoder.image_size).batch(batch_size).prefetch(1):
        captions.extend(generator(images.numpy()).captions)
    return captions


def score(records: Sequence[CaptionRecord], captions: Sequence[str]) -> dict[str, Any]:
    """BLEU-1..4, distinct-caption share, the oracle (reference #0 against the others), and BLEU per number
    of objects where the records say it."""
    references = [[tokenize(c) for c in r.captions] for r in records]
    hypotheses = [tokenize(c) for c in captions]
    result: dict[str, Any] = {
        **bleu_scores(references, hypotheses),
        "distinct_captions": distinct_share(captions),
        "mean_length": mean_caption_length(captions),
        "images": len(records),
    }
    if any(len(refs) > 1 for refs in references):  # needs a second reference to score the first against
        result["oracle"] = oracle_bleu(references)
    counts = [r.meta.get("num_objects") for r in records]
    if all(c is not None for c in counts):
        groups: dict[str, list[int]] = {}
        for i, count in enumerate(counts):
            groups.setdefault(f"objects={count}", []).append(i)
            if count >= 2:
                groups.setdefault("objects>=2", []).append(i)
        result["by_group"] = {
            name: {**bleu_scores([references[i] for i in idx], [hypotheses[i] for i in idx]), "images": len(idx)}
            for name, idx in sorted(groups.items())
        }
    return result


def evaluate(
    run: Run,
    split: str = "test",
    data_dir: str | None = None,
    beam_size: int = 1,
    batch_size: int = 256,
    out: str | Path | None = None,
    max_images: int | None = None,
) -> dict[str, Any]:
    """Caption every image of `split`, score against all references, record in metrics.json.

    Args:
        run: Run. A loaded run directory.
        split: str. Split to score. Defaults to "test".
        data_dir: str. Dataset folder; defaults to the one the run was trained on.
        beam_size: int. 1 is greedy.
        batch_size: int. Images per generation batch.
        out: path. Where to save the generated captions as JSON, if given.
        max_images: int. Score only the first N images.
    """
    data = run.config.data
    records = load_split(data.dataset, data_dir or data.data_dir, split)[:max_images]
    generator = CaptionGenerator(run.model, run.vocab, run.config.decode.max_length, beam_size=beam_size)
    started = time.perf_counter()
    captions = generate_captions(generator, [r.image for r in records], batch_size)
    seconds = time.perf_counter() - started
    result = score(records, captions)
    result.update(
        split=split,
        beam_size=beam_size,
        seconds=seconds,
        tokenization="captioner.vocab.tokenize: lower-case, punctuation dropped, alphanumeric words",
    )
    if out is not None:
        write_json(out, [{"image": r.image, "caption": c, "references": list(r.captions)} for r, c in zip(records, captions)])
    update_metrics(run.path, {f"eval_{split}_beam{beam_size}": result})
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """Human-readable lines for the CLI."""
    bleu = " ".join(f"BLEU-{n}={result[f'bleu{n}']:.4f}" for n in range(1, 5))
    lines = [
        f"{result['split']} ({result['images']} images, beam {result['beam_size']}): {bleu}",
        f"distinct captions: {result['distinct_captions']:.1%} of images",
    ]
    oracle = result.get("oracle")
    if oracle:
        lines.append("oracle (reference #0 vs the others): " + " ".join(f"BLEU-{n}={oracle[f'bleu{n}']:.4f}" for n in range(1, 5)))
    for name, group in result.get("by_group", {}).items():
        lines.append(f"  {name:<11} ({group['images']:>4} images): BLEU-4={group['bleu4']:.4f}")
    return lines


def mean_caption_length(captions: Sequence[str]) -> float:
    return float(np.mean([len(tokenize(c)) for c in captions])) if captions else 0.0
