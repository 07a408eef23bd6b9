"""Plain records every dataset loader produces, and the JSON split files that hold them.

A split file (`train.json`, `val.json`, `test.json`) looks like

    {"dataset": "shapes", "split": "test", "records": [
        {"image": "images/test_00000.png", "captions": ["a small red circle", ...],
         "qa": [{"question": "what color is the circle?", "answer": "red", "type": "color"}],
         "meta": {"num_objects": 1}}]}

with image paths relative to the split file. No TensorFlow here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captioner.errors import CaptionerError


@dataclass(frozen=True)
class QAPair:
    """One question about an image, its answer and its question type (colour, count, ...)."""

    question: str
    answer: str
    question_type: str = "other"


@dataclass(frozen=True)
class CaptionRecord:
    """One image with all of its reference captions (and question/answer pairs where the dataset has them)."""

    image: str  # absolute or working-directory-relative path of the image file
    captions: tuple[str, ...]
    qa: tuple[QAPair, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def image_id(self) -> str:
        return Path(self.image).name


def record_to_json(record: CaptionRecord, root: Path) -> dict[str, Any]:
    return {
        "image": Path(record.image).relative_to(root).as_posix(),
        "captions": list(record.captions),
        "qa": [{"question": q.question, "answer": q.answer, "type": q.question_type} for q in record.qa],
        "meta": record.meta,
    }


def split_to_json(dataset: str, split: str, records: list[CaptionRecord], root: Path) -> dict[str, Any]:
    return {"dataset": dataset, "split": split, "records": [record_to_json(r, root) for r in records]}


def read_split_file(path: str | Path) -> list[CaptionRecord]:
    """Read one split JSON file into records; malformed files raise CaptionerError."""
    path = Path(path)
    if not path.is_file():
        raise CaptionerError(f"no annotation file {path}; run `captioner data shapes --out {path.parent}` first")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        raw_records = payload["records"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CaptionerError(f"{path} is not a captioner split file ({exc.__class__.__name__}: {exc})") from None
    root = path.parent
    records = []
    for index, raw in enumerate(raw_records):
        try:
            captions = tuple(str(c) for c in raw["captions"])
            qa = tuple(QAPair(str(q["question"]), str(q["answer"]), str(q.get("type", "other"))) for q in raw.get("qa", []))
            image = str(root / raw["image"])
        except (KeyError, TypeError) as exc:
            raise CaptionerError(f"{path}: record {index} is malformed (missing {exc})") from None
        records.append(CaptionRecord(image=image, captions=captions, qa=qa, meta=dict(raw.get("meta", {}))))
    if not records:
        raise CaptionerError(f"{path} holds no records")
    return records
