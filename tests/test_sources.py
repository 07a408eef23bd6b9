"""Several datasets in one run (`--add-source DATASET=DIR`, `--source-weights`): what the mixed training list holds,
one vocabulary over all sources, evaluation per source, and one line naming the source for each bad input."""

import json
import re
from collections import Counter
from pathlib import Path

import pytest
from test_vqa_lines import write_lines_dataset

from captioner.cli import main
from captioner.data import CaptionRecord, load_split, mix, sources
from captioner.data.shapes import ShapesSpec, generate
from captioner.data.vocab import tokenize
from captioner.errors import CaptionerError


def _records(prefix: str, count: int) -> list[CaptionRecord]:
    return [CaptionRecord(f"{prefix}{i}", f"{prefix}{i}.png", (f"caption {prefix} {i}",)) for i in range(count)]


def test_without_weights_the_mix_is_every_record_once():
    a, b = _records("a", 3), _records("b", 5)
    assert mix([a, b], [], seed=0) == a + b


def test_weights_set_each_source_s_share_repeating_a_small_source_evenly_and_cutting_a_large_one():
    small, large = _records("s", 10), _records("l", 30)
    mixed = mix([small, large], [1, 1], seed=3)
    assert len(mixed) == 40
    counts = Counter(r.image_id for r in mixed)
    assert all(counts[r.image_id] == 2 for r in small)  # 20 places: every small record exactly twice
    assert sum(counts[r.image_id] for r in large) == 20 and all(
        counts[r.image_id] == 1 for r in large if r.image_id in counts
    )
    assert mix([small, large], [1, 1], seed=3) == mixed  # fixed by the seed
    assert {r.image_id for r in mix([small, large], [1, 1], seed=4)} != {
        r.image_id for r in mixed
    }  # which are cut: by the seed
    assert [r.image_id[0] for r in mix([small, large], [3, 1], seed=0)].count("s") == 30
    assert all(r.image_id[0] == "l" for r in mix([small, large], [0, 1], seed=0))


@pytest.mark.parametrize(
    "weights, message", [([1], "1 source weight(s) for 2 sources"), ([1, -1], "at least 0"), ([0, 0], "not all 0")]
)
def test_bad_weights_are_one_line(weights, message):
    with pytest.raises(CaptionerError, match=re.escape(message)):
        mix([_records("a", 2), _records("b", 2)], weights, seed=0)


def test_a_source_is_dataset_equals_folder():
    assert sources("karpathy", "coco", ["flickr8k=data/f8k", "shapes=a=b"]) == [
        ("karpathy", "coco"),
        ("flickr8k", "data/f8k"),
        ("shapes", "a=b"),
    ]
    with pytest.raises(CaptionerError, match="not DATASET=DIR"):
        sources("shapes", "a", ["data/f8k"])


@pytest.fixture(scope="module")
def second_shapes(tmp_path_factory) -> Path:
    """A second shapes dataset: other images (another seed), 8 train / 4 val / 4 test, where a circle is a "disc"."""
    out = tmp_path_factory.mktemp("shapes_b")
    generate(out, ShapesSpec(image_size=32, num_train=8, num_val=4, num_test=4, seed=7, max_objects=1), workers=1)
    for split in ("train", "val", "test"):
        path = out / f"{split}.json"
        path.write_text(path.read_text().replace("circle", "disc"))
    return out


def _train(tiny_data, run, *extra):
    return main(
        [
            "train",
            "--preset",
            "tiny",
            "--data-dir",
            str(tiny_data),
            "--run",
            str(run),
            "--epochs",
            "1",
            "--quiet",
            *extra,
        ]
    )


def test_one_run_on_two_datasets_one_vocabulary_weights_and_evaluation_per_source(
    tiny_data, second_shapes, tmp_path, capsys
):
    run = tmp_path / "both"
    assert _train(tiny_data, run, "--add-source", f"shapes={second_shapes}", "--source-weights", "1,1") == 0
    capsys.readouterr()
    config = json.loads((run / "config.json").read_text())["data"]
    assert config["more_sources"] == [f"shapes={second_shapes.resolve()}"] and config["source_weights"] == [1.0, 1.0]
    stats = json.loads((run / "metrics.json").read_text())["train"]
    assert [s["train_records"] for s in stats["sources"]] == [32, 8]
    assert [s["train_records_mixed"] for s in stats["sources"]] == [20, 20]  # 40 records, half each: the 8 repeated
    assert stats["train_images"] == 40 and stats["val_images"] == 20  # dev splits 16 and 4, in equal shares
    vocab = set(json.loads((run / "vocab.json").read_text())["words"])
    words = {
        w
        for source in (tiny_data, second_shapes)
        for r in load_split("shapes", source, "train")
        for c in r.captions
        for w in tokenize(c)
    }
    assert {"disc", "circle"} <= words <= vocab  # one vocabulary over both sources (min_word_count 1)

    assert main(["evaluate", "--run", str(run), "--split", "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 16  # the first source by default
    assert main(["evaluate", "--run", str(run), "--split", "test", "--data-dir", str(second_shapes), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 4
    assert main(["evaluate", "--run", str(run), "--dataset", "flickr8k"]) == 2
    assert "trained on shapes, shapes, not flickr8k" in capsys.readouterr().err


def _one_line(captured, *words):
    lines = [line for line in captured.err.strip().splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("captioner:") and "Traceback" not in captured.err, captured.err
    for word in words:
        assert word in lines[0], lines[0]


def test_bad_sources_are_one_line_naming_the_source_and_nothing_is_written(tiny_data, second_shapes, tmp_path, capsys):
    no_val = tmp_path / "no_val"
    no_val.mkdir()
    (no_val / "train.json").write_text((second_shapes / "train.json").read_text())
    (no_val / "images").symlink_to(second_shapes / "images")
    cases = [
        (["--add-source", f"shapes={tmp_path / 'missing'}"], ["source 2", "missing", "does not exist"]),
        (["--add-source", f"shapes={no_val}"], ["source 2", "no_val", "val.json"]),
        (["--add-source", f"shapes={second_shapes}", "--source-weights", "1"], ["1 source weight(s) for 2 sources"]),
        (["--add-source", str(second_shapes)], ["not DATASET=DIR"]),
        (["--add-source", f"nonesuch={second_shapes}"], ["source 2", "unknown dataset 'nonesuch'"]),
    ]
    for number, (extra, words) in enumerate(cases):
        run = tmp_path / f"run{number}"
        assert _train(tiny_data, run, *extra) == 2, extra
        _one_line(capsys.readouterr(), *words)
        assert not (run / "config.json").exists() and not (run / "vocab.json").exists()


def test_question_sources_of_other_answer_types_are_one_line_naming_the_source(tiny_data, tmp_path, capsys):
    lines = write_lines_dataset(tmp_path / "lines")  # yes/no only; shapes questions have other answers too
    run = tmp_path / "vqa"
    assert (
        main(
            [
                "train-vqa",
                "--preset",
                "tiny",
                "--data-dir",
                str(tiny_data),
                "--run",
                str(run),
                "--epochs",
                "1",
                "--quiet",
                "--add-source",
                f"vqa-lines={lines}",
            ]
        )
        == 2
    )
    _one_line(capsys.readouterr(), "source 2 (vqa-lines", "--answer-type")
    assert not (run / "config.json").exists()


def test_question_sources_mixed_in_one_vqa_run(tmp_path, capsys):
    first, second = write_lines_dataset(tmp_path / "a"), write_lines_dataset(tmp_path / "b")
    run = tmp_path / "vqa"
    assert (
        main(
            [
                "train-vqa",
                "--preset",
                "tiny",
                "--dataset",
                "vqa-lines",
                "--data-dir",
                str(first),
                "--add-source",
                f"vqa-lines={second}",
                "--run",
                str(run),
                "--epochs",
                "1",
                "--quiet",
                "--source-weights",
                "2,1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    stats = json.loads((run / "metrics.json").read_text())["train"]
    assert [s["train_records"] for s in stats["sources"]] == [17, 17]  # 16 yes/no and a "maybe" each
    assert [s["train_records_mixed"] for s in stats["sources"]] == [23, 11]  # 34 records, 2:1
    assert main(["evaluate", "--run", str(run), "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["questions"] == 8
