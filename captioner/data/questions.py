"""Question-answer loaders: `QARecord`s from the built-in shapes, the easy-VQA package, VQA v2 JSON and
question-per-line files (the VQA v2 yes/no subset on COCO photos).

Pure Python, no TensorFlow. Every loader returns one record per question; what it cannot use is counted
in a `Skipped` (never dropped silently).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from captioner.data.records import QARecord, Skipped, read_split_file
from captioner.errors import CaptionerError

ANSWER_TYPES = ("yes/no", "number", "other")  # VQA's coarse answer classes
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


# "is there a dog in the picture ?", "are there skis ?", "is this a kitchen ?": what a presence or scene question asks
# about
_SUBJECT = re.compile(
    r"^(?:is there|are there|is this|are these|is it)\s+(?:a |an |any |some )?(.+?)"
    r"(?:\s+in (?:the|this) (?:picture|photo|image))?\s*\??$"
)


def question_subject(question: str) -> str:
    """The thing a presence or scene question asks about, at most two words ("dog", "tennis racket"); "" for
    any other question."""
    match = _SUBJECT.match(" ".join(question.lower().split()))
    return match.group(1) if match and len(match.group(1).split()) <= 2 else ""


def load_shapes_qa(data_dir: Path, split: str) -> list[QARecord]:
    """The questions the shapes generator wrote beside its captions (one answer each)."""
    records = []
    for index, record in enumerate(read_split_file(data_dir / f"{split}.json")):
        for number, pair in enumerate(record.qa):
            records.append(
                QARecord(
                    record.image,
                    pair.question,
                    (pair.answer,),
                    pair.question_type,
                    answer_type(pair.answer),
                    f"{split}-{index}-{number}",
                )
            )
    if not records:
        raise CaptionerError(
            f"{data_dir / f'{split}.json'} has no questions; regenerate it with `captioner data shapes --out "
            f"{data_dir}`"
        )
    return records


def load_easy_vqa(split: str) -> list[QARecord]:
    """easy-VQA (github.com/vzhou842/easy-VQA) through the package's own functions.

    The package ships "train" (4,000 images) and "test" (1,000); "train" here is its train split without every
    tenth image, which forms "val" for early stopping, so the test split is never seen during training.
    """
    try:
        import easy_vqa
    except ImportError:
        raise CaptionerError(
            "the easy-vqa dataset needs the easy-vqa package: pip install easy-vqa (or pip install -e '.[vqa]')"
        ) from None
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
        raise CaptionerError(
            f"VQA v2 has public answers for the splits train and val only, not '{split}'; evaluate on --split val"
        )
    subtype = VQA_SUBTYPES[split]
    hint = "download VQA v2 questions and annotations there"
    questions_file = _one_file(data_dir, f"*{subtype}_questions.json", hint)
    annotations_file = _one_file(data_dir, f"*{subtype}_annotations.json", hint)
    questions = _read_json_list(questions_file, "questions")
    annotations = {
        a.get("question_id"): a for a in _read_json_list(annotations_file, "annotations") if isinstance(a, dict)
    }
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
        records.append(
            QARecord(str(image), text, answers, str(annotation.get("question_type", "other")), kind, str(question_id))
        )
    return records


LINE_SPLITS = {"train": "Train", "val": "Dev", "dev": "Dev", "test": "Test"}


def load_vqa_lines(data_dir: Path, split: str, skipped: Skipped | None = None) -> list[QARecord]:
    """Questions one a line, `NAME.jpg#N<TAB>question ? answer`, in `*TrainImages.txt`, `*DevImages.txt` and
    `*TestImages.txt` with the photos in `Images/` (the layout of the VQA v2 yes/no subset on COCO photos, and of
    Flickr8k's files), or in the parent folder's `Images/` (another split of the same photos in a subfolder, such as
    `vqa_coco_yesno/byphoto/`). Split "val" reads the Dev file. A line without a tab, without "?" or without an answer,
    and a question whose photo is not on disk, are skipped and counted.
    """
    skipped = skipped if skipped is not None else Skipped()
    if split not in LINE_SPLITS:
        raise CaptionerError(
            f"split '{split}' is not one of {', '.join(LINE_SPLITS)} (val reads the *DevImages.txt file)"
        )
    path = _one_file(
        data_dir, f"*{LINE_SPLITS[split]}Images.txt", "put the split files (NAME#N<TAB>question ? answer) there"
    )
    images = data_dir / "Images"
    if not images.is_dir() and (data_dir.parent / "Images").is_dir():
        images = data_dir.parent / "Images"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CaptionerError(
            f"cannot read {path} ({exc.__class__.__name__}); check the file and its permissions"
        ) from None
    on_disk: dict[str, bool] = {}
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key, tab, text = line.partition("\t")
        question, mark, answer = text.rpartition("?")
        name = key.split("#", 1)[0].strip()
        where = f"{path.name}:{number}"
        if not tab or not name:
            skipped.add("line without a tab", where)
            continue
        if not mark or not question.strip():
            skipped.add("line without a question mark", where)
            continue
        if not answer.strip():
            skipped.add("question without an answer", where)
            continue
        if name not in on_disk:
            on_disk[name] = (images / name).is_file()
        if not on_disk[name]:
            skipped.add("image not on disk", name)
            continue
        answer = answer.strip().lower()
        question = question.strip() + " ?"
        first_word = question.split()[0].lower()  # "is", "are", "does" ...: the question type VQA's breakdowns use
        records.append(
            QARecord(str(images / name), question, (answer,), first_word, answer_type(answer), f"{split}-{key.strip()}")
        )
    return records


def _one_file(data_dir: Path, pattern: str, hint: str) -> Path:
    matches = sorted(data_dir.glob(pattern))
    if not matches:
        raise CaptionerError(f"no file matching {pattern} in {data_dir}; {hint}")
    if len(matches) > 1:
        raise CaptionerError(
            f"several files match {pattern} in {data_dir} ({', '.join(m.name for m in matches)}); keep one"
        )
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
