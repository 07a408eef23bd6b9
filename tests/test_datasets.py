"""Real caption datasets: the Flickr8k files in ../shared, and small Karpathy / COCO / captions.txt files."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import SHARED

from captioner.data import Skipped, load_split
from captioner.errors import CaptionerError

FLICKR8K = SHARED / "datasets" / "flickr8k"  # the real photos and the original caption and split files
needs_shared = pytest.mark.skipif(not (FLICKR8K / "Images").is_dir(), reason="../shared/datasets/flickr8k is absent")


def _placeholder(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # the loaders only check that the file exists; no test here decodes it


@pytest.fixture(scope="module")
def flickr8k(tmp_path_factory):
    """The real Flickr8k text files, with an empty placeholder for every image a split file names."""
    root = tmp_path_factory.mktemp("flickr8k")
    (root / "Flickr8k_text").mkdir()
    for text in FLICKR8K.glob("*.txt"):
        shutil.copy(text, root / "Flickr8k_text" / text.name)
    for split_file in (root / "Flickr8k_text").glob("Flickr_8k.*Images.txt"):
        for name in split_file.read_text().split():
            _placeholder(root / "Flicker8k_Dataset" / name)
    return root


@needs_shared
def test_real_flickr8k_files_parse_with_counts_and_a_skip_summary(flickr8k):
    skipped = Skipped()
    splits = {split: load_split("flickr8k", flickr8k, split, skipped) for split in ("train", "val", "test")}
    assert {s: len(r) for s, r in splits.items()} == {"train": 6074, "val": 1013, "test": 1013}
    for split, official in (("train", 6000), ("val", 1000), ("test", 1000)):
        records = [r for r in splits[split] if not r.image_id.startswith("e")]
        assert len(records) == official
        assert all(len(r.captions) == 5 for r in records)
    appended = [r for s in splits.values() for r in s if r.image_id.startswith("e")]
    assert len(appended) == 100 and any(r.image_id.endswith(".png") for r in appended)
    by_name = {r.image_id: r for r in appended}
    # One line joins two captions of one appended image: it keeps its other three (#0, #1, #4).
    assert len(by_name["e102455176_5f8ead62d5.jpg"].captions) == 3
    # Another has caption #1 twice: both are kept, in file order.
    assert len(by_name["e58368365_03ed3e5bdf.jpg"].captions) == 6
    assert skipped.count("malformed line") == 1
    unlisted = skipped.reasons["caption of an image in no split"]
    names = {d.split(" caption ")[0] for d in unlisted}
    assert "2258277193_586949ec62.jpg.1" in names and len(unlisted) >= 5
    assert "image not on disk" not in skipped.reasons
    assert skipped.summary("captions").startswith(f"skipped {skipped.count()} captions:")


@needs_shared
def test_the_real_flickr8k_folder_loads_whole_and_its_skip_summary_matches_the_disk():
    on_disk = {p.name for p in (FLICKR8K / "Images").iterdir()}
    skipped = Skipped()
    splits = {split: load_split("flickr8k", FLICKR8K, split, skipped) for split in ("train", "val", "test")}
    assert {s: len(r) for s, r in splits.items()} == {"train": 6000, "val": 1000, "test": 1000}
    assert all(r.image_id in on_disk and len(r.captions) == 5 for s in splits.values() for r in s)
    listed = {
        n for split in ("train", "dev", "test") for n in (FLICKR8K / f"Flickr_8k.{split}Images.txt").read_text().split()
    }
    missing = listed - on_disk
    assert len(missing) == 100 and all(n.startswith("e") for n in missing)  # the appended names have no photo
    assert skipped.count("image not on disk") == len(missing)
    assert skipped.count("malformed line") == 1


@needs_shared
def test_flickr8k_images_missing_on_disk_are_counted(flickr8k, tmp_path):
    root = tmp_path / "f8k"
    shutil.copytree(flickr8k / "Flickr8k_text", root)
    (root / "Images").mkdir()
    names = (root / "Flickr_8k.testImages.txt").read_text().split()
    for name in names[:10]:
        _placeholder(root / "Images" / name)
    skipped = Skipped()
    assert len(load_split("flickr8k", root, "test", skipped)) == 10
    assert skipped.count("image not on disk") == 1003


@needs_shared
def test_official_flickr8k_test_captions_reproduce_the_human_bleu(flickr8k):
    from captioner.evaluation.metrics import human_agreement

    records = [r for r in load_split("flickr8k", flickr8k, "test") if not r.image_id.startswith("e")]
    scores = human_agreement([r.captions for r in records], tokenization="whitespace")
    assert [round(scores["nltk"][f"bleu{n}"], 3) for n in range(1, 5)] == [0.634, 0.443, 0.304, 0.208]
    coco = scores.get("coco")
    if coco is not None:  # pycocoevalcap installed
        assert [round(coco[f"bleu{n}"], 3) for n in range(1, 5)] == [0.634, 0.443, 0.304, 0.208]
        assert round(coco["cider"], 3) == 0.782


def test_flickr8k_captions_csv_layout(tmp_path):
    (tmp_path / "Images").mkdir()
    rows = ["image,caption"]
    for i in range(2005):
        _placeholder(tmp_path / "Images" / f"{i:05d}.jpg")
        rows += [f'{i:05d}.jpg,"A dog, running ."', f"{i:05d}.jpg,A dog runs ."]
    rows.append("broken line without a comma")
    (tmp_path / "captions.txt").write_text("\n".join(rows) + "\n")
    skipped = Skipped()
    train, val, test = (load_split("flickr8k", tmp_path, s, skipped) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (5, 1000, 1000)
    assert train[0].captions == ("A dog, running .", "A dog runs .")
    assert skipped.count("malformed line") == 1


def test_karpathy_json(tmp_path):
    images = []
    for i, split in enumerate(["train", "restval", "val", "test", "test"]):
        _placeholder(tmp_path / "val2014" / f"img{i}.jpg")
        images.append(
            {
                "filepath": "val2014",
                "filename": f"img{i}.jpg",
                "split": split,
                "sentences": [{"raw": f"A cat number {i}.", "tokens": ["a", "cat"]}, {"tokens": ["a", "small", "cat"]}],
            }
        )
    images.append({"filepath": "val2014", "filename": "gone.jpg", "split": "test", "sentences": [{"raw": "x"}]})
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": images, "dataset": "coco"}))
    skipped = Skipped()
    train = load_split("karpathy", tmp_path, "train", skipped)
    test = load_split("karpathy", tmp_path, "test", skipped)
    assert [r.image_id for r in train] == ["img0.jpg", "img1.jpg"]  # restval folded into train
    assert [r.image_id for r in test] == ["img3.jpg", "img4.jpg"]
    assert test[0].captions == ("A cat number 3.", "a small cat")
    assert skipped.count("image not on disk") == 1


def test_karpathy_json_in_a_folder_given_relative_to_the_working_folder(tmp_path, monkeypatch):
    """`--data-dir ../shared/datasets/vqa_coco_yesno` (photos in its `Images/`, no `filepath`): every photo found (a
    relative folder was once read from `/`, and every photo counted as not on disk)."""
    _placeholder(tmp_path / "data" / "Images" / "a.jpg")
    images = [{"filename": "a.jpg", "split": "test", "sentences": [{"raw": "A cat."}]}]
    (tmp_path / "data" / "dataset_coco.json").write_text(json.dumps({"images": images}))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    skipped = Skipped()
    test = load_split("karpathy", Path("../data"), "test", skipped)
    assert [r.image_id for r in test] == ["a.jpg"] and Path(test[0].image).is_file() and skipped.count() == 0


def test_coco_captions_json(tmp_path):
    payload = {
        "images": [
            {"id": 1, "file_name": "COCO_val2014_000000000001.jpg"},
            {"id": 2, "file_name": "COCO_val2014_000000000002.jpg"},
            {"id": 3, "file_name": "COCO_val2014_000000000003.jpg"},
        ],
        "annotations": [
            {"image_id": 1, "id": 10, "caption": "A man riding a horse."},
            {"image_id": 1, "id": 11, "caption": "A rider."},
            {"image_id": 2, "id": 12, "caption": "Two birds."},
            {"image_id": 99, "id": 13, "caption": "Orphan."},
        ],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "captions_val2014.json").write_text(json.dumps(payload))
    for i in (1, 2):
        _placeholder(tmp_path / "val2014" / f"COCO_val2014_{i:012d}.jpg")
    skipped = Skipped()
    records = load_split("coco", tmp_path, "val", skipped)
    assert [(r.image_id, len(r.captions)) for r in records] == [
        ("COCO_val2014_000000000001.jpg", 2),
        ("COCO_val2014_000000000002.jpg", 1),
    ]
    assert skipped.count("caption of an unknown image id") == 1 and skipped.count("split entry without captions") == 1
    with pytest.raises(CaptionerError, match="karpathy"):
        load_split("coco", tmp_path, "test")


def test_a_split_with_nothing_usable_is_an_error(tmp_path):
    (tmp_path / "captions.txt").write_text("image,caption\nx.jpg,A dog.\n")
    with pytest.raises(CaptionerError, match="no usable images.*image not on disk"):
        load_split("flickr8k", tmp_path, "test")
