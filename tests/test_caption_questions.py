"""Yes/no questions made from captions (`captioner questions --from-captions`): the rules, the files, bad input."""

import json

import pytest
from PIL import Image

from captioner.cli import main
from captioner.data import Skipped, load_qa_split
from captioner.data.caption_questions import named, question_for, questions_from_captions
from captioner.data.records import CaptionRecord


def _photo(name: str, *captions: str) -> CaptionRecord:
    return CaptionRecord(image=f"/photos/{name}.jpg", captions=tuple(captions))


def test_a_caption_names_a_concept_by_its_word_a_plural_or_a_synonym():
    assert named("Two men riding bikes down a street.") == {"person", "man", "bicycle", "street"}
    assert named("A woman on a road") == {"person", "woman", "road", "street"}
    assert named("A puppy on the living room couch") == {"dog", "living room", "couch"}
    assert named("A jet in a clear sky") == {"airplane"} and named("a blue sky") == set()
    assert question_for("dog") == ("is there a dog in the picture ?", "presence")
    assert question_for("umbrella") == ("is there an umbrella in the picture ?", "presence")
    assert question_for("grass") == ("is there grass in the picture ?", "presence")
    assert question_for("kitchen") == ("is this a kitchen ?", "scene")


def test_yes_needs_most_captions_no_needs_none_and_they_are_balanced():
    kitchens = [
        _photo(
            f"k{i}",
            "a kitchen with an oven and a sink",
            "an oven and a sink in a kitchen",
            "a small kitchen",
            "an oven",
            "a sink",
        )
        for i in range(6)
    ]
    # kitchen: 1 of 5, not yes
    odd = _photo("odd", "a dog on a bed", "a dog in a kitchen", "a dog on the floor", "a cat", "a bed")
    made = questions_from_captions([*kitchens, odd], seed=0)
    about = {(q.image, q.concept): q.answer for q in made.questions}
    assert about[("/photos/odd.jpg", "dog")] == "yes" and ("/photos/odd.jpg", "kitchen") not in about
    assert sum(q.answer == "yes" for q in made.questions) == sum(q.answer == "no" for q in made.questions) > 0
    for q in made.questions:  # a "yes" is named by 3 of 5 captions, a "no" by none
        photo = next(p for p in [*kitchens, odd] if p.image == q.image)
        mentions = sum(q.concept in named(c) for c in photo.captions)
        assert mentions >= 3 if q.answer == "yes" else mentions == 0, (q, mentions)
    # the dog photo's hard "no": a concept most captions of its kitchen neighbours name
    assert any(
        q.image == "/photos/odd.jpg" and q.answer == "no" and q.hard and q.concept in {"oven", "sink"}
        for q in made.questions
    )
    # the same seed, the same questions
    assert questions_from_captions([*kitchens, odd], seed=0).questions == made.questions


def test_phrasings_ask_the_same_questions_in_several_ways():
    from captioner.errors import CaptionerError

    assert question_for("dog") == question_for("dog", 0) == ("is there a dog in the picture ?", "presence")
    assert [question_for("dog", p)[0] for p in range(1, 4)] == [
        "is there a dog ?",
        "do you see a dog ?",
        "does the photo show a dog ?",
    ]
    assert question_for("kitchen", 1) == ("is it a kitchen ?", "scene")
    photos = [
        _photo(f"p{i}", *[("a dog on a bed in a kitchen" if i % 2 else "a car and a bus on a street")] * 5)
        for i in range(40)
    ]
    once, varied = questions_from_captions(photos, seed=0), questions_from_captions(photos, seed=0, phrasings=4)
    assert {q.question.split()[0] for q in once.questions} == {"is"}
    assert {" ".join(q.question.split()[:2]) for q in varied.questions} >= {"is there", "do you", "does the"}
    assert [(q.image, q.answer, q.concept) for q in varied.questions if q.answer == "yes"] == [
        (q.image, q.answer, q.concept) for q in once.questions if q.answer == "yes"
    ]  # what is asked does not change
    with pytest.raises(CaptionerError, match="phrasings"):
        questions_from_captions(photos, phrasings=5)


def test_a_narrow_word_is_asked_and_never_answered_no_where_its_wider_concept_is_named():
    """A photo of women gets "is there a woman ? yes", not also "is there a person ?", and never "is there a man ? no"
    where a caption says "people" (a man may be among them)."""
    photos = [
        _photo(f"w{i}", "a woman on a bench", "two women sitting", "a woman and her dog", "people in a park")
        for i in range(3)
    ]
    photos += [_photo(f"m{i}", "a man on a bench", "a man sitting", "a man with a dog") for i in range(3)]
    photos += [_photo(f"c{i}", "a cat on a bed", "a cat", "a bed") for i in range(3)]  # something to answer "no" about
    made = questions_from_captions(photos)
    asked = {(q.image.split("/")[-1][0], q.concept, q.answer) for q in made.questions}
    assert ("w", "woman", "yes") in asked and ("m", "man", "yes") in asked
    assert not {a for a in asked if a[1:] == ("person", "yes")} and ("w", "man", "no") not in asked


def test_photos_whose_captions_support_no_question_are_counted_skips():
    photos = [
        _photo("sky", "a blue sky", "clouds", "the sky"),
        _photo("dog", "a dog", "a dog", "a dog on grass"),
        _photo("cat", "a cat on a bed", "a cat", "a bed"),
    ]
    made = questions_from_captions(photos)
    assert made.skipped.count("photo whose captions name no known concept") == 1
    assert {q.image for q in made.questions} == {"/photos/dog.jpg", "/photos/cat.jpg"}
    alone = questions_from_captions(photos[1:2])  # nothing it lacks is named anywhere: no "no" to match a "yes"
    assert not alone.questions and alone.skipped.count("photo with no concept to answer no about") == 1


def _karpathy(root, entries):
    (root / "Images").mkdir(parents=True)
    images = []
    for name, split, captions in entries:
        if not name.startswith("gone"):
            Image.new("RGB", (8, 8)).save(root / "Images" / name)
        images.append({"filename": name, "split": split, "sentences": [{"raw": c} for c in captions]})
    (root / "dataset_coco.json").write_text(json.dumps({"images": images}))


def test_the_command_writes_vqa_lines_files_that_train_vqa_reads_and_counts_what_it_skips(tmp_path, capsys):
    dogs, cats = ["a dog on the grass"] * 3, ["a cat on a bed", "a cat", "a cat sleeping on a bed"]
    entries = [
        (f"{kind}{i}.jpg", split, dogs if kind == "d" else cats)
        for split in ("train", "val", "test")
        for i in range(3)
        for kind in "dc"
    ]
    entries += [
        ("gone.jpg", "train", dogs),
        ("sky.jpg", "test", ["a blue sky"] * 3),
    ]  # a photo missing, captions of nothing
    _karpathy(tmp_path / "data", entries)
    out = tmp_path / "qa"
    assert (
        main(
            [
                "questions",
                "--from-captions",
                "--dataset",
                "karpathy",
                "--data-dir",
                str(tmp_path / "data"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "skipped 1 train entries: 1 image not on disk" in captured.err
    assert (
        "skipped 1 test photos: 1 photo whose captions name no known concept" in captured.err
        and "Traceback" not in captured.err
    )
    assert "no scene questions" in captured.err  # not asked for by name: a note, and the presence questions are made
    for split in ("train", "val", "test"):
        skipped = Skipped()
        records = load_qa_split("vqa-lines", out, split, skipped)
        assert records and skipped.count() == 0 and {r.answer for r in records} == {"yes", "no"}
        assert {r.image.split("/")[-1][0] for r in records} == {"d", "c"}  # each split's questions about its own photos
    dog_questions = [r for r in load_qa_split("vqa-lines", out, "test") if r.image.endswith("d0.jpg")]
    assert ("is there a dog in the picture ?", "yes") in [(r.question, r.answer) for r in dog_questions]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--kinds", "scene"], "supports a scene question"),
        (["--kinds", "colour"], "--kinds colour: choose from presence, scene"),
        (["--splits", "dev2"], "--splits dev2: choose from train, val, test"),
    ],
)
def test_bad_requests_are_one_line_and_write_nothing(tmp_path, capsys, argv, expected):
    _karpathy(
        tmp_path / "data",
        [(f"d{i}.jpg", split, ["a dog on the grass"] * 3) for i, split in enumerate(("train", "val", "test"))],
    )
    out = tmp_path / "qa"
    assert (
        main(
            [
                "questions",
                "--from-captions",
                "--dataset",
                "karpathy",
                "--data-dir",
                str(tmp_path / "data"),
                "--out",
                str(out),
                *argv,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("captioner: error")]
    assert len(errors) == 1 and expected in errors[0] and "Traceback" not in err, err
    assert not out.exists()


def test_an_empty_caption_file_is_one_line(tmp_path, capsys):
    (tmp_path / "dataset_coco.json").write_text("")
    assert (
        main(
            [
                "questions",
                "--from-captions",
                "--dataset",
                "karpathy",
                "--data-dir",
                str(tmp_path),
                "--out",
                str(tmp_path / "qa"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not a Karpathy split file" in err
