"""Question-per-line files (the layout of the VQA v2 yes/no subset on COCO photos): what is read, what is
skipped and counted, and a VQA head trained on cached features of a frozen backbone."""

import json
from pathlib import Path

import pytest
from conftest import FULL, SHARED, tiny_config
from PIL import Image

from captioner.data import Skipped, load_qa_split
from captioner.errors import CaptionerError

NO_TOP = SHARED / "weights" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"
# photo number -> split; photos 0 and 1 have questions in train and in test (the split is by question)
SPLITS = {"Train": range(0, 8), "Dev": range(8, 10), "Test": (0, 1, 10, 11)}


def write_lines_dataset(root: Path) -> Path:
    """Red and blue photos, two questions each (`is it red ?`, `is it blue ?`), one file per split, and in the
    train file one line of each kind a loader must skip."""
    (root / "Images").mkdir(parents=True)
    for number in range(12):
        Image.new("RGB", (40, 30), (220, 30, 30) if number % 2 else (30, 30, 220)).save(
            root / "Images" / f"photo_{number}.jpg"
        )
    for split, numbers in SPLITS.items():
        lines = []
        for number in numbers:
            red = number % 2 == 1
            offset = 2 if split == "Test" and number < 2 else 0  # other questions about a photo train saw
            lines.append(f"photo_{number}.jpg#{offset}\tIs it red ? {'yes' if red else 'no'}")
            lines.append(f"photo_{number}.jpg#{offset + 1}\tIs it blue ? {'no' if red else 'yes'}")
        if split == "Train":
            lines += [
                "photo_0.jpg#5 Is it red ? no",  # no tab
                "photo_0.jpg#6\tIs it red no",  # no question mark
                "photo_0.jpg#7\tIs it red ? maybe",  # not yes/no
                "photo_99.jpg#0\tIs it red ? no",  # no such photo
                "photo_0.jpg#8\tIs it red ?",  # no answer
                "",
            ]
        (root / f"vaq2.0.{split}Images.txt").write_text("\n".join(lines) + "\n")
    return root


def test_line_files_are_read_and_every_unusable_line_is_counted(tmp_path):
    root = write_lines_dataset(tmp_path / "data")
    skipped = Skipped()
    records = load_qa_split("vqa-lines", root, "train", skipped, answer_type="yes/no")
    assert len(records) == 16
    assert records[0].question == "Is it red ?" and records[0].answers == ("no",) and records[0].answer_type == "yes/no"
    assert records[0].question_type == "is" and Path(records[0].image) == root / "Images" / "photo_0.jpg"
    assert {reason: skipped.count(reason) for reason in skipped.reasons} == {
        "line without a tab": 1,
        "line without a question mark": 1,
        "answer not yes/no": 1,
        "image not on disk": 1,
        "question without an answer": 1,
    }
    assert "vaq2.0.TrainImages.txt:18" in skipped.reasons["line without a question mark"]
    everything = load_qa_split("vqa-lines", root, "train", Skipped())  # no answer type asked: "maybe" is an answer too
    assert len(everything) == 17 and everything[-1].answer_type == "other"
    assert len(load_qa_split("vqa-lines", root, "val")) == 4  # val reads the Dev file
    assert len(load_qa_split("vqa-lines", root, "test")) == 8


def test_missing_split_files_and_unknown_answer_types_say_what_to_do(tmp_path):
    root = write_lines_dataset(tmp_path / "data")
    (root / "vaq2.0.DevImages.txt").unlink()
    with pytest.raises(CaptionerError, match=r"no file matching \*DevImages.txt .*split files"):
        load_qa_split("vqa-lines", root, "val")
    with pytest.raises(CaptionerError, match="unknown answer type 'maybe'"):
        load_qa_split("vqa-lines", root, "train", answer_type="maybe")
    with pytest.raises(CaptionerError, match="split 'eval' is not one of"):
        load_qa_split("vqa-lines", root, "eval")
    (root / "vaq2.0.TestImages.txt").write_text("photo_0.jpg#0\tIs it red ? maybe\nno tab at all\n")
    with pytest.raises(CaptionerError, match=r"no usable questions \(skipped 2 questions: .*answer not yes/no"):
        load_qa_split("vqa-lines", root, "test", answer_type="yes/no")


def lines_config(root: Path, cache: Path, **overrides: str):
    """The vqa-coco recipe at test size: a frozen MobileNetV2 with random weights (224 px), features cached."""
    config = tiny_config(
        root,
        **{
            "data.dataset": "vqa-lines",
            "data.feature_cache_dir": str(cache),
            "model.encoder": "mobilenet_v2",
            "model.encoder_weights": "none",
            "model.encoder_pooling": "avg",
            "vqa.answer_type": "yes/no",
            "vqa.image_norm": "layer",
            "vqa.image_hidden_dim": "32",
            "train.monitor": "val_accuracy",
            "train.val_split": "train",
            "train.batch_size": "4",
            "train.epochs": "40" if FULL else "3",
            "train.patience": "40",
            "train.learning_rate": "0.003",
            **overrides,
        },
    )
    config.task = "vqa"
    return config


@pytest.mark.slow  # over 7 s: the default suite stays under 10 minutes (BENCHMARKS.md, "Test suite")
def test_a_vqa_head_trains_on_cached_features_and_scores_seen_and_unseen_photos(tmp_path):
    from captioner.evaluation.evaluate import evaluate_vqa
    from captioner.run import load_run
    from captioner.train import train

    root = write_lines_dataset(tmp_path / "data")
    metrics = train(lines_config(root, tmp_path / "cache"), tmp_path / "run", verbose=0)["train"]
    assert metrics["features_computed"] == 8  # the photos of the train split (validated on train here), once each
    assert metrics["monitor"] == "val_accuracy" and "best_val_accuracy" in metrics
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert metrics["best_val_accuracy"] == max(history["val_accuracy"])  # the best epoch is the most accurate one
    blind = train(lines_config(root, tmp_path / "cache", **{"vqa.use_image": "false"}), tmp_path / "blind", verbose=0)[
        "train"
    ]
    assert blind["features_computed"] == 0  # the same cache, keyed by the photos' content

    run = load_run(tmp_path / "run", task="vqa")
    result = evaluate_vqa(run, split="test")  # from pixels: the CNN runs as for a user's photo
    assert result["questions"] == 8 and 0 < result["interval_95"] < 0.5
    assert {name: group["questions"] for name, group in result["by_photo"].items()} == {
        "seen in training": 4,
        "unseen": 4,
    }


@pytest.mark.slow  # 40 s, two trainings of 40 epochs: the default suite's time (BENCHMARKS.md, "Test suite")
@pytest.mark.skipif(not NO_TOP.is_file(), reason="needs the ImageNet MobileNetV2 weights in ../shared/weights")
def test_with_imagenet_features_the_answer_comes_from_the_photo(tmp_path):
    """Random MobileNetV2 weights give grids of ~1e-12 (zeros in the float16 cache): real ones tell red from blue.
    The kept epoch is the one with the lowest loss, not the first to answer every training question: that one can
    sit on a knife's edge, and the test is answered from pixels, not from the float16 cache (at 0.003 and 25 epochs
    seed 0 never got there: 0.75). At 0.01, 0.003 and 0.03 seed 0 later stayed at the opening plateau (loss 0.693,
    every answer the same; 2026-12-01, AMD EPYC, float32) while seeds 1 and 2 learned; at 0.001 and 40 epochs seeds
    0, 1 and 2 all answer every test question."""
    from captioner.evaluation.evaluate import evaluate_vqa
    from captioner.run import load_run
    from captioner.train import train

    root = write_lines_dataset(tmp_path / "data")
    for name, extra in (("run", {}), ("blind", {"vqa.use_image": "false"})):
        train(
            lines_config(
                root,
                tmp_path / "cache",
                **{
                    "model.encoder_weights": str(NO_TOP),
                    "train.epochs": "40",
                    "train.learning_rate": "0.001",
                    "train.monitor": "val_loss",
                    **extra,
                },
            ),
            tmp_path / name,
            verbose=0,
        )
    assert evaluate_vqa(load_run(tmp_path / "run", task="vqa"), split="test")["accuracy"] == 1.0
    # the question alone: a coin
    assert evaluate_vqa(load_run(tmp_path / "blind", task="vqa"), split="test")["accuracy"] == 0.5


@pytest.mark.slow  # over 7 s: the default suite stays under 10 minutes (BENCHMARKS.md, "Test suite")
def test_the_image_only_model_gives_one_answer_per_photo(tmp_path):
    from captioner.generation.answering import Answerer
    from captioner.run import load_run
    from captioner.train import train

    root = write_lines_dataset(tmp_path / "data")
    train(
        lines_config(root, tmp_path / "cache", **{"vqa.use_question": "false", "train.epochs": "2"}),
        tmp_path / "run",
        verbose=0,
    )
    run = load_run(tmp_path / "run", task="vqa")
    answerer = Answerer(run.model, run.vocab, run.answers, run.config.vqa.max_question_length)
    questions = answerer.question_array([[answerer.encode("is it red ?"), answerer.encode("is it blue ?")]])
    import numpy as np

    image = np.random.default_rng(0).integers(0, 255, (1, 224, 224, 3)).astype(np.uint8)
    probabilities, _ = answerer(image, questions)
    np.testing.assert_allclose(probabilities[0, 0], probabilities[0, 1], rtol=1e-6)


@pytest.mark.skipif(
    not (SHARED / "datasets" / "vqa_coco_yesno").is_dir(), reason="needs ../shared/datasets/vqa_coco_yesno"
)
def test_the_real_vqa_yes_no_files_load_whole():
    root = SHARED / "datasets" / "vqa_coco_yesno"
    counts = {}
    for split in ("train", "val", "test"):
        skipped = Skipped()
        records = load_qa_split("vqa-lines", root, split, skipped, answer_type="yes/no")
        counts[split] = (
            len(records),
            len({r.image for r in records}),
            sum(r.answer == "yes" for r in records),
            skipped.count(),
        )
    assert counts == {
        "train": (7846, 6732, 3787, 0),
        "val": (1952, 1776, 906, 0),
        "test": (2022, 1827, 912, 0),
    }  # the README's counts


def test_a_split_in_a_subfolder_reads_the_photos_of_the_parent_folder(tmp_path):
    """`byphoto/` holds other split files of the parent's photos: the photos are found in `../Images/`."""
    write_lines_dataset(tmp_path)
    (tmp_path / "byphoto").mkdir()
    for split in ("Train", "Dev", "Test"):
        (tmp_path / "byphoto" / f"other.{split}Images.txt").write_text(f"photo_{len(split)}.jpg#0\tIs it red ? no\n")
    skipped = Skipped()
    records = load_qa_split("vqa-lines", tmp_path / "byphoto", "test", skipped)
    assert [Path(r.image) for r in records] == [tmp_path / "Images" / "photo_4.jpg"] and skipped.count() == 0


@pytest.mark.skipif(
    not (SHARED / "datasets" / "vqa_coco_yesno" / "byphoto").is_dir(),
    reason="needs ../shared/datasets/vqa_coco_yesno/byphoto",
)
def test_the_by_photo_and_caption_question_files_load_whole():
    """The by-photo split and the fixed "does the photo show X" test of ../shared (its README's counts), photos in the
    parent's `Images/`; no test photo is a train photo."""
    root = SHARED / "datasets" / "vqa_coco_yesno"
    counts, photos = {}, {}
    for folder, splits in (("byphoto", ("train", "val", "test")), ("captionqa", ("val", "test"))):
        for split in splits:
            skipped = Skipped()
            records = load_qa_split("vqa-lines", root / folder, split, skipped, answer_type="yes/no")
            photos[folder, split] = {r.image for r in records}
            counts[folder, split] = (len(records), len(photos[folder, split]), skipped.count())
    assert counts == {
        ("byphoto", "train"): (8885, 6098, 0),
        ("byphoto", "val"): (1464, 1017, 0),
        ("byphoto", "test"): (1471, 1012, 0),
        ("captionqa", "val"): (2500, 863, 0),
        ("captionqa", "test"): (2556, 855, 0),
    }
    assert not photos["byphoto", "train"] & (
        photos["byphoto", "test"] | photos["captionqa", "test"] | photos["captionqa", "val"]
    )


@pytest.mark.slow  # over 7 s: the default suite stays under 10 minutes (BENCHMARKS.md, "Test suite")
def test_the_recipe_s_commands_features_then_train_vqa_then_evaluate(tmp_path, capsys):
    """`make vqa-coco`'s path through the CLI: `features` fills the cache that `train-vqa` reads (0 computed there),
    and `evaluate` prints the interval, the per-photo split and the photo prior."""
    from captioner.cli import main

    root = write_lines_dataset(tmp_path / "data")
    cache = str(tmp_path / "cache")
    assert (
        main(
            [
                "features",
                "--dataset",
                "vqa-lines",
                "--data-dir",
                str(root),
                "--encoder",
                "mobilenet_v2",
                "--encoder-weights",
                "none",
                "--cache-dir",
                cache,
            ]
        )
        == 0
    )
    # train, dev and test photos (the broken lines counted apart)
    assert "12 of 12 images computed" in capsys.readouterr().out
    run = str(tmp_path / "run")
    assert (
        main(
            [
                "train-vqa",
                "--dataset",
                "vqa-lines",
                "--data-dir",
                str(root),
                "--encoder-weights",
                "none",
                "--cache-dir",
                cache,
                "--run",
                run,
                "--epochs",
                "1",
                "--quiet",
                "--set",
                "vqa.question_hidden_dim=16",
                "--set",
                "vqa.fusion_dim=16",
                "--set",
                "vqa.image_hidden_dim=16",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "best val accuracy" in captured.out and "skipped 5 questions" in captured.err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["train"]
    assert (
        metrics["features_computed"] == 0
        and json.loads((tmp_path / "run" / "config.json").read_text())["preset"] == "vqa-coco"
    )
    assert main(["evaluate", "--run", run, "--split", "test"]) == 0
    out = capsys.readouterr().out
    assert "(95%)" in out and "seen in training" in out and "unseen" in out and "same photo" in out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["eval_test"]
    assert {name: g["questions"] for name, g in metrics["by_truth"].items()} == {"yes": 4, "no": 4}
    assert {name: g["questions"] for name, g in metrics["by_subject"].items()} == {"red": 4, "blue": 4}
    assert "by true answer:" in out and "by thing asked about" in out and "  red " in out


@pytest.mark.parametrize(
    "question, subject",
    [
        ("is there a dog in the picture ?", "dog"),
        ("are there skis ?", "skis"),
        ("Is this a kitchen?", "kitchen"),
        ("is there a tennis racket ?", "tennis racket"),
        ("is there grass in the photo ?", "grass"),
        ("is this a good day for surfing ?", ""),
        ("what color is the bus ?", ""),
    ],
)
def test_the_thing_a_presence_or_scene_question_asks_about(question, subject):
    from captioner.data.questions import question_subject

    assert question_subject(question) == subject


def test_a_resumed_run_keeps_the_most_accurate_epoch_as_its_best():
    """Resuming restores the best value and the patience count from history.json in the monitor's direction:
    with val_accuracy the best epoch is the highest one, not the lowest."""
    import tempfile

    from captioner.fileio import write_json
    from captioner.run import HISTORY_FILE
    from captioner.train import BACKUP_DIR, BestCheckpoint, ResumableEarlyStopping, RunLog, _restore_progress

    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder)
        (run_dir / BACKUP_DIR).mkdir()
        write_json(run_dir / BACKUP_DIR / "training_metadata.json", {"epoch": 3, "batch": 0})
        write_json(run_dir / HISTORY_FILE, {"val_loss": [0.5, 0.6, 0.55, 0.4], "val_accuracy": [0.5, 0.7, 0.6, 0.9]})
        checkpoint = BestCheckpoint(run_dir / "model.keras", "val_accuracy", "max")
        stopping = ResumableEarlyStopping(monitor="val_accuracy", mode="max", patience=5)
        _restore_progress(run_dir, RunLog(run_dir / HISTORY_FILE, 1, 1, "questions"), checkpoint, stopping)
        # the 4th epoch was not backed up: cut; of the three kept, epoch 2 (0.7) is the best, one epoch since
        assert (checkpoint.best, checkpoint.best_epoch, stopping.resume_best, stopping.resume_wait) == (0.7, 1, 0.7, 1)


@pytest.mark.slow  # over 7 s: the default suite stays under 10 minutes (BENCHMARKS.md, "Test suite")
def test_a_photo_that_cannot_be_decoded_is_a_counted_skip_and_the_others_train(tmp_path):
    from captioner.train import train

    root = write_lines_dataset(tmp_path / "data")
    (root / "Images" / "photo_3.jpg").write_bytes(b"not a jpeg at all")
    metrics = train(lines_config(root, tmp_path / "cache", **{"train.epochs": "1"}), tmp_path / "run", verbose=0)[
        "train"
    ]
    assert metrics["features_computed"] == 7 and metrics["train_questions"] == 14  # photo_3's two questions left out
    assert "1 unreadable image" in metrics["skipped"] and "1 image not on disk" in metrics["skipped"]
