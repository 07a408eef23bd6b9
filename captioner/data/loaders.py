"""Dataset loaders: annotation files in, `CaptionRecord`s out. Pure Python, no TensorFlow."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from captioner.data.captions import load_coco, load_flickr8k, load_karpathy
from captioner.data.questions import (
    ANSWER_TYPES,
    answer_type,
    load_easy_vqa,
    load_shapes_qa,
    load_vqa_lines,
    load_vqa_v2,
)
from captioner.data.records import CaptionRecord, QAPair, QARecord, Skipped, read_split_file
from captioner.errors import CaptionerError

DATASETS = ("shapes", "flickr8k", "karpathy", "coco")
QA_DATASETS = ("shapes", "easy-vqa", "vqa", "vqa-lines")


def load_split(dataset: str, data_dir: str | Path, split: str, skipped: Skipped | None = None) -> list[CaptionRecord]:
    """Records of one split of a dataset.

    Args:
        dataset: str. One of DATASETS.
        data_dir: str. Folder the dataset was generated or downloaded into.
        split: str. "train", "val" or "test".
        skipped: Skipped. Collects what the loader could not use (real datasets), by reason.
    """
    data_dir = Path(data_dir)
    skipped = skipped if skipped is not None else Skipped()
    if not data_dir.is_dir():
        hint = (
            f"create it with `captioner data shapes --out {data_dir}`"
            if dataset == "shapes"
            else "download the dataset there"
        )
        raise CaptionerError(f"dataset directory {data_dir} does not exist; {hint}")
    if dataset == "shapes":
        records = read_split_file(data_dir / f"{split}.json")
    elif dataset == "flickr8k":
        records = load_flickr8k(data_dir, split, skipped)
    elif dataset == "karpathy":
        records = load_karpathy(data_dir, split, skipped)
    elif dataset == "coco":
        records = load_coco(data_dir, split, skipped)
    else:
        raise CaptionerError(f"unknown dataset '{dataset}'; choose one of: {', '.join(DATASETS)}")
    if not records:
        detail = f" ({skipped.summary('entries')})" if skipped.count() else ""
        raise CaptionerError(f"the {split} split of {dataset} in {data_dir} has no usable images{detail}")
    empty = [r.image_id for r in records if not any(c.strip() for c in r.captions)]
    if empty:
        raise CaptionerError(
            f"{len(empty)} image(s) in the {split} split have only empty captions (first: {empty[0]}); fix or remove "
            f"them"
        )
    return records


def load_qa_split(
    dataset: str, data_dir: str | Path, split: str, skipped: Skipped | None = None, answer_type: str = ""
) -> list[QARecord]:
    """Question records of one split: one `QARecord` per question.

    Args:
        dataset: str. One of QA_DATASETS ("easy-vqa" reads the installed package and ignores data_dir).
        data_dir: str. Folder of the shapes split files, of the VQA v2 JSON files or of the question-per-line files.
        split: str. "train", "val" or "test" (VQA v2: train or val).
        skipped: Skipped. Collects what could not be used.
        answer_type: str. Keep only questions of this answer type ("yes/no", "number", "other"); the others are
            skipped and counted. "" keeps every question.
    """
    skipped = skipped if skipped is not None else Skipped()
    if answer_type and answer_type not in ANSWER_TYPES:
        raise CaptionerError(
            f"unknown answer type '{answer_type}'; use one of {', '.join(ANSWER_TYPES)} (or nothing for all)"
        )
    if dataset == "easy-vqa":
        records = load_easy_vqa(split)
    elif dataset in QA_DATASETS:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise CaptionerError(f"dataset directory {data_dir} does not exist")
        loaders = {
            "shapes": lambda: load_shapes_qa(data_dir, split),
            "vqa": lambda: load_vqa_v2(data_dir, split, skipped),
            "vqa-lines": lambda: load_vqa_lines(data_dir, split, skipped),
        }
        records = loaders[dataset]()
    else:
        raise CaptionerError(f"unknown question-answer dataset '{dataset}'; choose one of: {', '.join(QA_DATASETS)}")
    if answer_type:
        for record in records:
            if record.answer_type != answer_type:
                skipped.add(f"answer not {answer_type}", f"{record.question_id}: {record.answer!r}")
        records = [r for r in records if r.answer_type == answer_type]
    if not records:
        detail = f" ({skipped.summary('questions')})" if skipped.count() else ""
        raise CaptionerError(f"the {split} split of {dataset} in {data_dir} has no usable questions{detail}")
    empty = [r.question_id for r in records if not r.question.strip() or not any(a.strip() for a in r.answers)]
    if empty:
        raise CaptionerError(
            f"{len(empty)} question(s) of the {split} split have an empty question or no answer (first: {empty[0]})"
        )
    return records


def sources(dataset: str, data_dir: str, more_sources: Sequence[str]) -> list[tuple[str, str]]:
    """The (dataset, folder) pairs a run reads: the first source, then each of `more_sources` ("DATASET=DIR")."""
    pairs = [(dataset, data_dir)]
    for text in more_sources:
        name, sep, folder = text.partition("=")
        if not sep or not name or not folder:
            raise CaptionerError(f"source '{text}' is not DATASET=DIR (for example flickr8k=data/flickr8k)")
        pairs.append((name, folder))
    return pairs


def load_sources(
    load: Callable[..., list], pairs: Sequence[tuple[str, str]], split: str, skipped: Skipped, **options
) -> list[list]:
    """Each source's records of `split`, read by `load` (`load_split` or `load_qa_split`). With several sources an
    error names the source it came from; nothing is read past it."""
    parts = []
    for number, (dataset, folder) in enumerate(pairs, 1):
        try:
            parts.append(load(dataset, folder, split, skipped, **options))
        except CaptionerError as exc:
            if len(pairs) == 1:
                raise
            raise CaptionerError(f"source {number} ({dataset} in {folder}): {exc}") from None
    return parts


def mix(parts: Sequence[list], weights: Sequence[float], seed: int) -> list:
    """The records of several sources as one list. With no weights, all of them as they are. With weights (one per
    source), as many records as all sources hold together, source i's share in proportion to weights[i]: a source
    below its share is repeated (every record once before any twice), one above it is cut, which records by `seed`.
    The list is fixed for the run; training shuffles its order every epoch."""
    if not weights:
        return [record for part in parts for record in part]
    if len(weights) != len(parts):
        raise CaptionerError(
            f"{len(weights)} source weight(s) for {len(parts)} sources: give one weight per source, the first source "
            f"first"
        )
    if any(w < 0 for w in weights) or not sum(weights) > 0:
        raise CaptionerError(f"source weights {list(weights)} must be at least 0 and not all 0")
    total, rng = sum(len(part) for part in parts), np.random.default_rng(seed)
    mixed = []
    for part, weight in zip(parts, weights):
        wanted = round(total * weight / sum(weights))
        order = np.concatenate([rng.permutation(len(part)) for _ in range(-(-wanted // len(part)))]) if wanted else []
        mixed.extend(part[i] for i in order[:wanted])
    return mixed


__all__ = [
    "CaptionRecord",
    "QAPair",
    "QARecord",
    "Skipped",
    "DATASETS",
    "QA_DATASETS",
    "answer_type",
    "load_split",
    "load_qa_split",
    "load_sources",
    "mix",
    "read_split_file",
    "sources",
]
