"""Question-answer loaders (shapes, easy-VQA, VQA v2 JSON), the answer vocabulary and question batching."""

import json
import sys

import pytest
from PIL import Image

from captioner.data import QARecord, Skipped, answer_type, load_qa_split
from captioner.data.arrays import group_questions, question_arrays
from captioner.data.vocab import AnswerVocabulary, Vocabulary, normalize_answer
from captioner.errors import CaptionerError


def test_shapes_questions_come_from_the_split_files(tiny_data):
    records = load_qa_split("shapes", tiny_data, "train")
    split = json.loads((tiny_data / "train.json").read_text())
    assert len(records) == sum(len(r["qa"]) for r in split["records"])
    assert {r.question_type for r in records} >= {"count", "exist", "color"}
    assert all(len(r.answers) == 1 and r.answer == r.answers[0] for r in records)
    assert {r.answer_type for r in records if r.question_type == "count"} == {"number"}
    assert len({r.question_id for r in records}) == len(records)


def test_answer_types():
    assert [answer_type(a) for a in ("yes", "No", "2", "two", "red", "10 dogs")] == [
        "yes/no",
        "yes/no",
        "number",
        "number",
        "other",
        "other",
    ]


def test_majority_answer_is_the_training_target():
    record = QARecord("x.png", "what?", ("red", "blue", "blue", "red", "blue"))
    assert record.answer == "blue"


def _write_vqa(root, with_images=(1, 2)):
    (root / "val2014").mkdir(parents=True)
    for image_id in with_images:
        Image.new("RGB", (8, 8), "red").save(root / "val2014" / f"COCO_val2014_{image_id:012d}.jpg")
    questions = {
        "questions": [
            {"image_id": 1, "question": "What color is it?", "question_id": 10},
            {"image_id": 2, "question": "How many cats?", "question_id": 20},
            {"image_id": 3, "question": "Is it a dog?", "question_id": 30},  # image not on disk
            {"image_id": 2, "question": "Where?", "question_id": 40},  # no annotation
            {"image_id": 2, "question_id": 50},  # malformed
        ]
    }

    def answers(*xs):
        return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(xs)]

    annotations = {
        "annotations": [
            {
                "question_id": 10,
                "image_id": 1,
                "question_type": "what color is the",
                "answer_type": "other",
                "multiple_choice_answer": "red",
                "answers": answers(*["red"] * 7, "dark red", "orange", "red"),
            },
            {
                "question_id": 20,
                "image_id": 2,
                "question_type": "how many",
                "answer_type": "number",
                "multiple_choice_answer": "2",
                "answers": answers("2", "2", "two", "3", "2", "2", "2", "2", "2", "2"),
            },
            {
                "question_id": 30,
                "image_id": 3,
                "question_type": "is the",
                "answer_type": "yes/no",
                "multiple_choice_answer": "yes",
                "answers": answers(*["yes"] * 10),
            },
        ]
    }
    (root / "v2_OpenEnded_mscoco_val2014_questions.json").write_text(json.dumps(questions))
    (root / "v2_mscoco_val2014_annotations.json").write_text(json.dumps(annotations))


def test_vqa_v2_files_are_read_and_what_cannot_be_used_is_counted(tmp_path):
    _write_vqa(tmp_path)
    skipped = Skipped()
    records = load_qa_split("vqa", tmp_path, "val", skipped)
    assert [r.question_id for r in records] == ["10", "20"]
    assert records[0].answers.count("red") == 8 and len(records[0].answers) == 10
    assert records[1].answer_type == "number" and records[1].question_type == "how many"
    assert skipped.count("image not on disk") == 1
    assert skipped.count("question without annotation") == 1
    assert skipped.count("malformed question entry") == 1
    assert skipped.summary("questions").startswith("skipped 3 questions:")


def test_vqa_v2_keeps_one_answer_type_and_counts_the_others(tmp_path):
    _write_vqa(tmp_path)
    skipped = Skipped()
    numbers = load_qa_split("vqa", tmp_path, "val", skipped, answer_type="number")
    assert [r.question_id for r in numbers] == ["20"]
    assert skipped.count("answer not number") == 1  # the colour question; the dog one was already skipped (no image)
    with pytest.raises(CaptionerError, match=r"no usable questions \(skipped .*answer not yes/no"):
        load_qa_split("vqa", tmp_path, "val", Skipped(), answer_type="yes/no")  # its only yes/no question has no image


def test_vqa_v2_without_files_or_test_answers_says_what_to_do(tmp_path):
    with pytest.raises(CaptionerError, match="questions.json"):
        load_qa_split("vqa", tmp_path, "val")
    with pytest.raises(CaptionerError, match="--split val"):
        load_qa_split("vqa", tmp_path, "test")


def test_easy_vqa_counts_and_splits():
    pytest.importorskip("easy_vqa")
    train, val, test = (load_qa_split("easy-vqa", "", split) for split in ("train", "val", "test"))
    assert len(train) + len(val) == 38575 and len(test) == 9673
    assert len({r.image for r in train} | {r.image for r in val}) == 4000 and len({r.image for r in test}) == 1000
    assert not {r.image for r in train} & {r.image for r in val}
    assert len({r.image for r in val}) == 400
    assert len({r.answer for r in train}) == 13
    assert {r.question_type for r in test} == {"color", "shape", "exist"}


def test_missing_easy_vqa_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "easy_vqa", None)  # import fails as if not installed
    with pytest.raises(CaptionerError, match="pip install easy-vqa"):
        load_qa_split("easy-vqa", "", "train")


def test_answer_vocabulary_keeps_the_most_frequent_and_maps_the_rest_to_other(tmp_path):
    answers = AnswerVocabulary.build(["yes"] * 5 + ["no"] * 3 + ["red"] * 3 + ["blue"], max_size=3)
    assert answers.answers == ["<other>", "yes", "no", "red"]
    assert answers.encode("Blue") == 0 and answers.encode("Yes.") == 1
    assert answers.coverage(["yes", "blue"]) == 0.5
    answers.save(tmp_path / "answers.json")
    assert AnswerVocabulary.load(tmp_path / "answers.json") == answers
    (tmp_path / "bad.json").write_text(json.dumps({"answers": ["yes", "<other>"]}))
    with pytest.raises(CaptionerError, match="invalid answer vocabulary"):
        AnswerVocabulary.load(tmp_path / "bad.json")


def test_answers_are_normalised_as_vqa_does():
    assert normalize_answer("Two dogs.") == "2 dogs"
    assert normalize_answer("the Red ball!") == "red ball"
    assert normalize_answer("3.5") == "3.5"


def test_questions_are_grouped_per_image_and_padded():
    records = [
        QARecord(f"img{i % 2}.png", f"is there a {w}?", ("yes",), question_id=str(i)) for i, w in enumerate("abcdefg")
    ]
    groups = group_questions(records, questions_per_image=3)
    assert [(image, len(g)) for image, g in groups] == [("img0.png", 3), ("img0.png", 1), ("img1.png", 3)]
    vocab = Vocabulary.build(r.question for r in records)
    answers = AnswerVocabulary.build(["yes"])
    questions, targets = question_arrays(groups, vocab, answers, 3, 6)
    assert questions.shape == (3, 3, 6) and targets.shape == (3, 3)
    assert targets.tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 1]]  # padding slots are 0, ignored by the loss
    assert (questions[1, 1:] == 0).all() and (questions[1, 0, :4] > 0).all()
