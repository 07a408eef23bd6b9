import hashlib
import json

import numpy as np

from captioner.data import load_split
from captioner.data.shapes import ShapeObject, ShapesSpec, caption_candidates, generate, make_example, relation


def _digest(folder):
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def test_same_seed_gives_byte_identical_files(tmp_path):
    spec = ShapesSpec(image_size=32, num_train=6, num_val=2, num_test=2, seed=3)
    generate(tmp_path / "a", spec, workers=1)
    generate(tmp_path / "b", spec, workers=2)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_other_seed_gives_other_scenes():
    first = make_example(ShapesSpec(seed=0), "train", 0)
    second = make_example(ShapesSpec(seed=1), "train", 0)
    assert np.asarray(first[0]).tobytes() != np.asarray(second[0]).tobytes()


def test_splits_use_separate_streams():
    train = make_example(ShapesSpec(), "train", 5)
    test = make_example(ShapesSpec(), "test", 5)
    assert np.asarray(train[0]).tobytes() != np.asarray(test[0]).tobytes()


def test_records_have_five_captions_and_questions(tiny_data):
    records = load_split("shapes", tiny_data, "train")
    assert len(records) == 32
    for record in records:
        assert len(record.captions) == 5 and len(set(record.captions)) == 5
        assert record.qa and all(q.answer for q in record.qa)
        assert 1 <= record.meta["num_objects"] <= 2
    payload = json.loads((tiny_data / "test.json").read_text())
    assert payload["records"][0]["image"].startswith("images/test_")


def test_relation_uses_the_dominant_axis():
    a = ShapeObject("circle", "red", "small", x=10, y=30)
    b = ShapeObject("square", "blue", "big", x=50, y=35)
    assert relation(a, b) == "to the left of" and relation(b, a) == "to the right of"
    c = ShapeObject("square", "blue", "big", x=12, y=60)
    assert relation(a, c) == "above" and relation(c, a) == "below"


def test_captions_name_every_object_and_use_an_before_vowels():
    a = ShapeObject("circle", "orange", "small", x=10, y=30)
    b = ShapeObject("square", "blue", "big", x=50, y=35)
    captions = caption_candidates([a, b])
    assert captions[0] == "a small orange circle to the left of a big blue square"
    assert "an orange circle to the left of a blue square" in captions
    assert all(" a orange" not in c for c in captions)


def test_objects_do_not_overlap_and_relations_are_unambiguous():
    for index in range(50):
        _, objects, _, _ = make_example(ShapesSpec(), "val", index)
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                dx, dy = abs(a.x - b.x), abs(a.y - b.y)
                assert max(dx, dy) >= 1.5 * min(dx, dy)
