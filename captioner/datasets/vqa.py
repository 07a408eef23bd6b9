"""Question-answer loaders: `QARecord`s from the built-in shapes, the easy-VQA package and VQA v2 JSON.

Pure Python, no TensorFlow. Every loader returns one record per question; what it cannot use is counted
in a `Skipped` (never dropped silently).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from captioner.datasets.records import QARecord, Skipped, read_split_file
from captioner.errors import CaptionerError

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
EASY_VQA_VAL_EVERY = 10  # easy-VQA ships train and test only: every 10th training image (id % 10 == 9) validates


def answer_type(answer: str) -> str:
    """VQA's coarse answer class: "yes/no", "number" (digits or a number word) or "other"."""
    text = answer.strip().lower()
    if text in ("yes", "no"):
        return "yes/no"
    if re.fullmatch(r"\d+", text) or text in NUMBER_WORDS:
        return "number"
    return "other"


def load_shapes_qa(data_dir: Path, split: str) -> list[QARecord]:
    """The questions the shapes generator wrote beside its captions (one answer each)."""
    records = []
    for index, record in enumerate(read_split_file(data_dir / f"{split}.json")):
        for number, pair in enumerate(record.qa):
            records.append(
                QARecord(record.image, pair.question, (pair.answer,), pair.question_type, answer_type(pair.answer), f"{split}-{index}-{number}")
            )
    if not records:
        raise CaptionerError(f"{data_dir / f'{split}.json'} has no questions; regenerate it with `captioner data shapes --out {data_dir}`")
    return records


def load_easy_vqa(split: str) -> list[QARecord]:
    """easy-VQA (github.com/vzhou842/easy-VQA) through the package's own functions.

    The package ships "train" (4,000 images) and "test" (1,000); "train" here is its train split without every
    tenth image, which forms "val" for early stopping, so the test split is never seen during training.
    """
    try:
        import easy_vqa
    except ImportError:
        raise CaptionerError("the easy-vqa dataset needs the easy-vqa package: pip install easy-vqa (or pip install -e '.[vqa]')") from None
    if split not in ("train", "val", "test"):
        raise CaptionerError(f"easy-vqa has the splits train, val (every tenth train image) and test, not '{split}'")
    source = "test" if split == "test" else "train"
    texts, answers, image_ids = easy_vqa.get_test_questions() if source == "test" else easy_vqa.get_train_questions()
    paths = easy_vqa.get_test_image_paths() if source == "test" else easy_vqa.get_train_image_paths()
    records = []
    for number, (text, answer, image_id) in enumerate(zip(texts, answers, image_ids)):
        if split != "test" and (image_id % EASY_VQA_VAL_EVERY == EASY_VQA_VAL_EVERY - 1) != (split == "val"):
            continue
        if answer in ("yes", "no"):
            kind = "exist"
        else:
            kind = "shape" if answer in ("circle", "rectangle", "triangle") else "color"
        records.append(QARecord(paths[image_id], text, (answer,), kind, answer_type(answer), f"{source}-{number}"))
    return records


VQA_SUBTYPES = {"train": "train2014", "val": "val2014"}


def load_vqa_v2(data_dir: Path, split: str, skipped: Skipped | None = None) -> list[QARecord]:
    """VQA v2 (Goyal et al. 2017): `*_{train,val}2014_questions.json` + `*_{train,val}2014_annotations.json`.

    Images are looked for at `{subtype}/COCO_{subtype}_{image_id:012d}.jpg` under `data_dir` or `data_dir/images`.
    Questions without an annotation or whose image is not on disk are skipped and counted.
    """
    skipped = skipped if skipped is not None else Skipped()
    if split not in VQA_SUBTYPES:
        raise CaptionerError(f"VQA v2 has public answers for the splits train and val only, not '{split}'; evaluate on --split val")
    subtype = VQA_SUBTYPES[split]
    questions_file = _one_file(data_dir, f"*{subtype}_questions.json")
    annotations_file = _one_file(data_dir, f"*{subtype}_annotations.json")
    questions = _read_json_list(questions_file, "questions")
    annotations = {a.get("question_id"): a for a in _read_json_list(annotations_file, "annotations") if isinstance(a, dict)}
    image_dirs = [d for d in (data_dir / subtype, data_dir / "images" / subtype) if d.is_dir()]
    records = []
    for question in questions:
        try:
            question_id, image_id, text = question["question_id"], int(question["image_id"]), str(question["question"])
        except (KeyError, TypeError, ValueError):
            skipped.add("malformed question entry", str(question)[:80])
            continue
        annotation = annotations.get(question_id)
        if annotation is None:
            skipped.add("question without annotation", str(question_id))
            continue
        try:
            answers = tuple(str(a["answer"]) for a in annotation["answers"])
        except (KeyError, TypeError):
            skipped.add("malformed annotation", str(question_id))
            continue
        name = f"COCO_{subtype}_{image_id:012d}.jpg"
        image = next((d / name for d in image_dirs if (d / name).is_file()), None)
        if image is None:
            skipped.add("image not on disk", name)
            continue
        kind = str(annotation.get("answer_type") or answer_type(answers[0] if answers else ""))
        records.append(QARecord(str(image), text, answers, str(annotation.get("question_type", "other")), kind, str(question_id)))
    return records


def _one_file(data_dir: Path, pattern: str) -> Path:
    matches = sorted(data_dir.glob(pattern))
    if not matches:
        raise CaptionerError(f"no file matching {pattern} in {data_dir}; download VQA v2 questions and annotations there")
    if len(matches) > 1:
        raise CaptionerError(f"several files match {pattern} in {data_dir} ({', '.join(m.name for m in matches)}); keep one")
    return matches[0]


def _read_json_list(path: Path, key: str) -> list:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        items = payload[key]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise CaptionerError(f"{path} is not a VQA {key} file ({exc.__class__.__name__})") from None
    if not isinstance(items, list):
        raise CaptionerError(f"{path}: '{key}' is not a list")
    return items
