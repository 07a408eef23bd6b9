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
import threading
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


class Skipped:
    """What a loader could not use, by reason: counted for a one-line summary, listed for --verbose.

    The same (reason, detail) is counted once, so loading several splits from one file into one collector
    reports each problem of the file once.
    """

    def __init__(self) -> None:
        self.reasons: dict[str, list[str]] = {}
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()  # tf.data reads images on several threads

    def add(self, reason: str, detail: str) -> None:
        with self._lock:
            if (reason, detail) not in self._seen:
                self._seen.add((reason, detail))
                self.reasons.setdefault(reason, []).append(detail)

    def unreadable(self, path: str, message: str) -> None:
        """`on_error(path, message)` of the image readers: an image that cannot be read, counted once."""
        self.add("unreadable image", message)

    def count(self, reason: str | None = None) -> int:
        return len(self.reasons.get(reason, [])) if reason else sum(len(v) for v in self.reasons.values())

    def summary(self, what: str = "entries") -> str:
        """e.g. "skipped 3 entries: 2 image not on disk, 1 malformed line" ("" when nothing was skipped)."""
        if not self.reasons:
            return ""
        parts = ", ".join(
            f"{len(v)} {reason}" for reason, v in sorted(self.reasons.items(), key=lambda kv: -len(kv[1]))
        )
        return f"skipped {self.count()} {what}: {parts}"

    def details(self) -> list[str]:
        return [f"{reason}: {detail}" for reason, items in self.reasons.items() for detail in items]


@dataclass(frozen=True)
class QARecord:
    """One question about one image with every annotator's answer (VQA v2 has ten; generated data one).

    `answer_type` is VQA's coarse class ("yes/no", "number", "other"); `question_type` is the dataset's own
    finer label (shapes: color, shape, count, size, exist, relation).
    """

    image: str  # absolute or working-directory-relative path of the image file
    question: str
    answers: tuple[str, ...]  # every annotator's answer, repeats kept (VQA accuracy counts them)
    question_type: str = "other"
    answer_type: str = "other"
    question_id: str = ""

    @property
    def answer(self) -> str:
        """The most frequent answer (ties: the first given), the training target."""
        counts: dict[str, int] = {}
        for a in self.answers:
            counts[a] = counts.get(a, 0) + 1
        return max(counts, key=counts.__getitem__)


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
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise CaptionerError(
            f"no annotation file {path}; run `captioner data shapes --out {path.parent}` first"
        ) from None
    except OSError as exc:
        raise CaptionerError(
            f"cannot read {path} ({exc.strerror}); check the permissions of the dataset folder"
        ) from None
    try:
        payload = json.loads(text)
        raw_records = payload["records"]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CaptionerError(f"{path} is not a captioner split file ({exc.__class__.__name__}: {exc})") from None
    root = path.parent
    records = []
    for index, raw in enumerate(raw_records):
        try:
            captions = tuple(str(c) for c in raw["captions"])
            qa = tuple(
                QAPair(str(q["question"]), str(q["answer"]), str(q.get("type", "other"))) for q in raw.get("qa", [])
            )
            image = str(root / raw["image"])
        except (KeyError, TypeError) as exc:
            raise CaptionerError(f"{path}: record {index} is malformed (missing {exc})") from None
        records.append(CaptionRecord(image=image, captions=captions, qa=qa, meta=dict(raw.get("meta", {}))))
    if not records:
        raise CaptionerError(f"{path} holds no records")
    return records
