"""The command line: outputs, exit codes, and one-line errors for bad input."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import FULL
from hostile import write_hostile_folder

from captioner.cli import expand_image_arguments, main

ROOT = Path(__file__).resolve().parents[1]


def _one_line_error(captured):
    lines = [line for line in captured.err.strip().splitlines() if line]
    assert lines and all(line.startswith("captioner:") for line in lines), captured.err
    assert "Traceback" not in captured.err


@pytest.mark.backends
def test_caption_prints_one_caption_per_image(overfit_run, tiny_data, capsys):
    images = sorted((tiny_data / "images").glob("test_*.png"))[:3]
    assert main(["caption", "--run", str(overfit_run), *map(str, images)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("\t" in line and line.split("\t")[1] for line in lines)


def test_caption_json_folder_and_glob(overfit_run, tiny_data, capsys):
    assert main(["caption", "--run", str(overfit_run), "--json", str(tiny_data / "images" / "val_*.png")]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 16 and all(r["caption"] for r in results)
    assert len(expand_image_arguments([str(tiny_data / "images")])) == 64


@pytest.mark.backends
def test_bad_images_are_reported_and_the_rest_still_captioned(overfit_run, tiny_data, tmp_path, capsys):
    good = sorted((tiny_data / "images").glob("test_*.png"))[:2]
    (tmp_path / "fake.png").write_text("this is text")
    args = [
        "caption",
        "--run",
        str(overfit_run),
        "--json",
        str(good[0]),
        str(tmp_path / "missing.jpg"),
        str(tmp_path / "fake.png"),
        str(good[1]),
    ]
    assert main(args) == 1
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert [("caption" in r) for r in results] == [True, False, False, True]
    assert "missing.jpg: no such file" in captured.err and "fake.png: not a JPEG, PNG" in captured.err
    _one_line_error(captured)


def test_missing_run_directory(tmp_path, capsys):
    assert main(["caption", "--run", str(tmp_path / "nope"), "x.png"]) == 2
    captured = capsys.readouterr()
    _one_line_error(captured)
    assert "does not exist" in captured.err


def test_run_directory_missing_files(overfit_run, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(overfit_run, broken)
    (broken / "vocab.json").unlink()
    assert main(["evaluate", "--run", str(broken)]) == 2
    captured = capsys.readouterr()
    _one_line_error(captured)
    assert "missing vocab.json" in captured.err


def test_run_directory_from_an_incompatible_version(overfit_run, tmp_path, capsys):
    old = tmp_path / "old"
    shutil.copytree(overfit_run, old)
    config = json.loads((old / "config.json").read_text())
    config["format_version"] = 99
    (old / "config.json").write_text(json.dumps(config))
    assert main(["caption", "--run", str(old), "x.png"]) == 2
    captured = capsys.readouterr()
    _one_line_error(captured)
    assert "format 99" in captured.err


def test_damaged_model_file(overfit_run, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    shutil.copytree(overfit_run, damaged)
    (damaged / "model.keras").write_bytes(b"garbage")
    assert main(["caption", "--run", str(damaged), "x.png"]) == 2
    _one_line_error(capsys.readouterr())


def test_dataset_directory_without_annotations(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert (
        main(
            [
                "train",
                "--preset",
                "tiny",
                "--data-dir",
                str(tmp_path / "empty"),
                "--run",
                str(tmp_path / "run"),
                "--quiet",
            ]
        )
        == 2
    )
    captured = capsys.readouterr()
    _one_line_error(captured)
    assert "no annotation file" in captured.err


def test_empty_captions_are_refused(tiny_data, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    payload = json.loads((data / "train.json").read_text())
    payload["records"][3]["captions"] = ["", "  "]
    (data / "train.json").write_text(json.dumps(payload))
    assert main(["train", "--preset", "tiny", "--data-dir", str(data), "--run", str(tmp_path / "run"), "--quiet"]) == 2
    captured = capsys.readouterr()
    _one_line_error(captured)
    assert "empty captions" in captured.err


@pytest.mark.backends
def test_evaluate_prints_bleu_and_saves_captions(overfit_run, tmp_path, capsys):
    out = tmp_path / "captions.json"
    assert main(["evaluate", "--run", str(overfit_run), "--split", "test", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "BLEU-4=" in printed and "distinct captions" in printed
    saved = json.loads(out.read_text())
    assert len(saved) == 16 and all(item["caption"] for item in saved)
    metrics = json.loads((overfit_run / "metrics.json").read_text())
    assert 0.0 <= metrics["eval_test_beam3"]["bleu4"] <= 1.0  # the run's default beam width


def test_evaluate_refuses_an_output_in_a_missing_folder(overfit_run, tmp_path, capsys):
    assert main(["evaluate", "--run", str(overfit_run), "--out", str(tmp_path / "no" / "such" / "dir.json")]) == 2
    _one_line_error(capsys.readouterr())


@pytest.mark.parametrize("value", ["0", "-2", "three"])
def test_bad_beam_sizes_are_one_line_errors(overfit_run, value, capsys):
    with pytest.raises(SystemExit) as info:
        main(["caption", "--run", str(overfit_run), "--beam-size", value, "x.png"])
    assert info.value.code == 2
    _one_line_error(capsys.readouterr())


def test_attention_maps_are_written_per_image(attention_run, tiny_data, tmp_path, capsys):
    images = sorted((tiny_data / "images").glob("test_*.png"))[:2]
    assert main(["caption", "--run", str(attention_run), "--attention", str(tmp_path / "one.png"), str(images[0])]) == 0
    assert (tmp_path / "one.png").stat().st_size > 1000
    assert (
        main(
            [
                "caption",
                "--run",
                str(attention_run),
                "--beam-size",
                "3",
                "--attention",
                str(tmp_path / "map.png"),
                *map(str, images),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in tmp_path.glob("map_*.png")) == [f"map_{p.stem}.png" for p in images]


def test_attention_on_a_show_tell_run_is_refused(overfit_run, tiny_data, tmp_path, capsys):
    image = str(sorted((tiny_data / "images").glob("test_*.png"))[0])
    assert main(["caption", "--run", str(overfit_run), "--attention", str(tmp_path / "a.png"), image]) == 2
    captured = capsys.readouterr()
    _one_line_error(captured)
    assert "no attention weights" in captured.err


def test_attention_map_in_a_missing_folder_is_refused(attention_run, tiny_data, tmp_path, capsys):
    image = str(sorted((tiny_data / "images").glob("test_*.png"))[0])
    assert main(["caption", "--run", str(attention_run), "--attention", str(tmp_path / "no" / "a.png"), image]) == 2
    _one_line_error(capsys.readouterr())


def test_training_curves(overfit_run, tmp_path, capsys):
    assert (overfit_run / "history.png").stat().st_size > 1000  # written at the end of training
    assert main(["plot-history", "--run", str(overfit_run), "--out", str(tmp_path / "curves.png")]) == 0
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_unknown_setting_is_a_one_line_error(tiny_data, tmp_path, capsys):
    args = [
        "train",
        "--preset",
        "tiny",
        "--data-dir",
        str(tiny_data),
        "--run",
        str(tmp_path / "r"),
        "--set",
        "model.bogus=1",
    ]
    assert main(args) == 2
    _one_line_error(capsys.readouterr())


@pytest.mark.slow  # kept out of the default suite for its 10-minute limit
def test_train_script_and_cli_share_the_code(tiny_data, tmp_path):
    command = [
        sys.executable,
        str(ROOT / "scripts" / "train.py"),
        "--preset",
        "tiny",
        "--data-dir",
        str(tiny_data),
        "--run",
        str(tmp_path / "script_run"),
        "--epochs",
        "1",
        "--max-train-images",
        "8",
        "--quiet",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "trained 1 epochs" in done.stdout
    assert (tmp_path / "script_run" / "model.keras").is_file()


def test_data_command_writes_the_dataset(tmp_path, capsys):
    assert (
        main(
            [
                "data",
                "shapes",
                "--out",
                str(tmp_path / "d"),
                "--train",
                "4",
                "--val",
                "2",
                "--test",
                "2",
                "--image-size",
                "32",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "d" / "images").glob("*.png"))) == 8
    assert "wrote shapes" in capsys.readouterr().out


@pytest.mark.slow  # over 7 s: the default suite stays under 10 minutes (BENCHMARKS.md, "Test suite")
def test_hostile_folder_in_one_call(overfit_run, tmp_path):
    """Every good file is captioned, every bad one gets one line, the exit code says some failed."""
    expected = write_hostile_folder(tmp_path / "hostile")
    command = [
        sys.executable,
        "-m",
        "captioner.cli",
        "caption",
        "--run",
        str(overfit_run),
        "--json",
        str(tmp_path / "hostile"),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    results = {Path(r["image"]).name: r for r in json.loads(done.stdout)}
    assert set(results) == set(expected)
    for name, good in expected.items():
        assert ("caption" in results[name]) == good, (name, results[name])
    error_lines = [line for line in done.stderr.splitlines() if line.startswith("captioner: error:")]
    assert len(error_lines) == sum(not good for good in expected.values())
    assert "Traceback" not in done.stderr
    assert "pixels allowed" in results["huge_30000x30000.png"]["error"]
    assert (results["rgba.png"]["width"], results["rgba.png"]["height"]) == (64, 48)
    assert (results["exif_rotated.jpg"]["width"], results["exif_rotated.jpg"]["height"]) == (48, 64)  # swapped
    assert "0 bytes" in results["empty.jpg"]["error"]


@pytest.mark.backends
def test_ask_prints_the_answer_and_the_top_five(vqa_run, tiny_data, capsys):
    image = sorted((tiny_data / "images").glob("train_*.png"))[0]
    assert main(["ask", "--run", str(vqa_run), str(image), "how many shapes are there?"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and lines[0].strip()
    probabilities = [float(line.split("%")[0]) for line in lines[1:]]
    # each printed to 0.1 point
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 100.25
    assert lines[1].split()[-1] == lines[0]  # the answer is the most probable one


def test_ask_json_answers_the_training_questions(vqa_run, tiny_data, capsys):
    record = json.loads((tiny_data / "train.json").read_text())["records"][0]
    questions = [q["question"] for q in record["qa"]]
    assert main(["ask", "--run", str(vqa_run), "--json", str(tiny_data / record["image"]), *questions]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [a["question"] for a in payload["answers"]] == questions
    assert all(len(a["top"]) == 5 and a["top"][0]["answer"] == a["answer"] for a in payload["answers"])
    right = sum(a["answer"] == normalize(q["answer"]) for a, q in zip(payload["answers"], record["qa"]))
    assert right >= len(questions) - 1  # the tiny model memorised its training questions


def normalize(answer):
    from captioner.data.vocab import normalize_answer

    return normalize_answer(answer)


@pytest.mark.backends
def test_ask_bad_questions(vqa_run, tiny_data, capsys):
    image = str(sorted((tiny_data / "images").glob("test_*.png"))[0])
    assert main(["ask", "--run", str(vqa_run), image, "  ?  "]) == 2
    _one_line_error(capsys.readouterr())
    # One empty question among others: the others are still answered, exit 1.
    assert main(["ask", "--run", str(vqa_run), image, "", "how many shapes are there?"]) == 1
    captured = capsys.readouterr()
    _one_line_error(captured)
    assert captured.out.strip()
    # Only unknown words: still answered, with a warning, exit 0.
    assert main(["ask", "--run", str(vqa_run), image, "xyzzy plugh?"]) == 0
    captured = capsys.readouterr()
    assert "warning: no word of" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert captured.out.strip()
    # 10,000 characters: answered from its first words, with a one-line warning; the question beside it too.
    assert (
        main(
            [
                "ask",
                "--run",
                str(vqa_run),
                "--json",
                image,
                "how many shapes are there " * 385,
                "what color is the circle?",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert "reads the first" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert [bool(a.get("answer")) for a in json.loads(captured.out)["answers"]] == [True, True]


def test_runs_of_the_other_task_are_refused(vqa_run, overfit_run, tiny_data, capsys):
    image = str(sorted((tiny_data / "images").glob("test_*.png"))[0])
    assert main(["ask", "--run", str(overfit_run), image, "what color is the circle?"]) == 2
    captured = capsys.readouterr()
    _one_line_error(captured)
    assert "use `captioner caption`" in captured.err
    assert main(["caption", "--run", str(vqa_run), image]) == 2
    captured = capsys.readouterr()
    _one_line_error(captured)
    assert "use `captioner ask`" in captured.err


def test_ask_on_a_missing_image(vqa_run, tmp_path, capsys):
    assert main(["ask", "--run", str(vqa_run), str(tmp_path / "nope.png"), "what?"]) == 2
    _one_line_error(capsys.readouterr())


@pytest.mark.backends
def test_evaluate_on_a_vqa_run_prints_accuracy_per_type(vqa_run, tmp_path, capsys):
    out = tmp_path / "answers.json"
    assert main(["evaluate", "--run", str(vqa_run), "--split", "test", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert (
        "VQA accuracy" in text
        and "yes/no" in text
        and "number" in text
        and "count" in text
        and "blind baselines" in text
    )
    answers = json.loads(out.read_text())
    assert answers and {"question", "answer", "answers"} <= set(answers[0])
    assert "eval_test" in json.loads((vqa_run / "metrics.json").read_text())


def test_evaluate_says_what_the_image_is_worth_to_a_vqa_run(vqa_run, capsys):
    """--black-images answers each question again with a black image: a model that memorised its training photos'
    colours and shapes loses most of its accuracy on them."""
    assert main(["evaluate", "--run", str(vqa_run), "--split", "train", "--black-images", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["black_image_accuracy"] <= 1.0
    if FULL:  # trained to the end (TensorFlow session): the photos carry the answers
        assert result["accuracy"] > 0.8 and result["black_image_accuracy"] < result["accuracy"] - 0.2, result
    assert main(["evaluate", "--run", str(vqa_run), "--split", "train", "--black-images"]) == 0
    assert "the same model with every image black" in capsys.readouterr().out


def test_train_vqa_flag_errors(tiny_data, tmp_path, capsys):
    assert main(["train-vqa", "--run", str(tmp_path / "r"), "--encoder-from", str(tmp_path / "none")]) == 2
    _one_line_error(capsys.readouterr())
    assert (
        main(
            ["train-vqa", "--run", str(tmp_path / "r"), "--data-dir", str(tiny_data), "--question-only", "--image-only"]
        )
        == 2
    )
    _one_line_error(capsys.readouterr())
    for bad in ("train.monitor=val_bleu", "vqa.answer_type=maybe"):  # refused before any training
        assert (
            main(
                [
                    "train-vqa",
                    "--preset",
                    "tiny",
                    "--run",
                    str(tmp_path / "r"),
                    "--data-dir",
                    str(tiny_data),
                    "--set",
                    bad,
                ]
            )
            == 2
        )
        captured = capsys.readouterr()
        _one_line_error(captured)
        assert bad.split("=")[1] in captured.err
    assert (
        main(
            [
                "train",
                "--preset",
                "tiny",
                "--run",
                str(tmp_path / "c"),
                "--data-dir",
                str(tiny_data),
                "--set",
                "train.monitor=val_accuracy",
            ]
        )
        == 2
    )
    assert "caption runs monitor val_loss" in capsys.readouterr().err


def test_train_vqa_command(tiny_data, tmp_path, capsys):
    run = tmp_path / "vqa"
    args = [
        "train-vqa",
        "--preset",
        "tiny",
        "--data-dir",
        str(tiny_data),
        "--run",
        str(run),
        "--epochs",
        "1",
        "--attention",
        "--fusion",
        "concat",
        "--quiet",
    ]
    assert main(args) == 0
    assert "questions/s" in capsys.readouterr().out
    config = json.loads((run / "config.json").read_text())
    assert config["task"] == "vqa" and config["vqa"]["attention"] and config["vqa"]["fusion"] == "concat"


def test_score_files_with_nltk_and_coco_metrics(tmp_path, capsys):
    hypotheses = [
        {
            "image": "a/1.jpg",
            "caption": "a dog runs on the grass",
            "references": ["a dog runs on grass", "a brown dog running"],
        },
        {
            "image": "a/2.jpg",
            "caption": "two people on a beach",
            "references": ["two people walk on a beach", "people near the sea"],
        },
    ]
    (tmp_path / "h.json").write_text(json.dumps(hypotheses))
    assert main(["score", "--hypotheses", str(tmp_path / "h.json"), "--no-meteor", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 2 and 0 < result["nltk"]["bleu1"] <= 1
    if result["coco"] is not None:
        assert abs(result["coco"]["bleu1"] - result["nltk"]["bleu1"]) < 0.02 and result["coco"]["meteor"] is None
    references = {"1.jpg": ["a dog runs", "a dog runs fast", "the dog runs"]}
    (tmp_path / "r.json").write_text(json.dumps(references))
    assert main(["score", "--human", "--references", str(tmp_path / "r.json"), "--no-meteor"]) == 0
    assert "BLEU-1..4" in capsys.readouterr().out


def test_score_bad_inputs(tmp_path, capsys):
    assert main(["score", "--hypotheses", str(tmp_path / "missing.json")]) == 2
    _one_line_error(capsys.readouterr())
    (tmp_path / "h.json").write_text(json.dumps({"1.jpg": "a dog"}))
    (tmp_path / "r.json").write_text(json.dumps({"2.jpg": ["a cat"]}))
    assert main(["score", "--hypotheses", str(tmp_path / "h.json"), "--references", str(tmp_path / "r.json")]) == 2
    _one_line_error(capsys.readouterr())
    assert main(["score", "--human"]) == 2
    _one_line_error(capsys.readouterr())


@pytest.mark.slow  # over 7 s: the default suite stays under 10 minutes (BENCHMARKS.md, "Test suite")
def test_features_command_fills_the_cache_train_reads(tiny_data, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    common = ["--encoder", "mobilenet_v2", "--encoder-weights", "none", "--cache-dir", cache]
    for shard in ("2/2", "1/2"):  # two workers, each its half
        assert (
            main(
                [
                    "features",
                    "--dataset",
                    "shapes",
                    "--data-dir",
                    str(tiny_data),
                    "--splits",
                    "train,val",
                    "--shard",
                    shard,
                    *common,
                ]
            )
            == 0
        )
        out = capsys.readouterr().out
        assert f"24 of 24 images (shard {shard}) computed" in out and "\x1b[" not in out
    assert (
        main(["features", "--dataset", "shapes", "--data-dir", str(tiny_data), "--splits", "train,val", *common]) == 0
    )
    assert "0 of 48 images computed" in capsys.readouterr().out  # the halves together are the whole
    run = tmp_path / "run"
    assert (
        main(["train", "--preset", "tiny", "--data-dir", str(tiny_data), "--run", str(run), "--epochs", "2", *common])
        == 0
    )
    assert json.loads((run / "metrics.json").read_text())["train"]["features_computed"] == 0
    # Not a terminal (as `make demo > log`): plain lines, one per epoch, no progress bar redrawn with escape codes.
    out = capsys.readouterr().out
    assert "\x1b[" not in out and "\r" not in out, out[:300]
    assert sum("val_loss" in line for line in out.splitlines()) == 2 and out.count("Epoch ") == 2, out
    assert main(["features", "--dataset", "shapes", "--data-dir", str(tiny_data), "--encoder", "small_cnn"]) == 2
    _one_line_error(capsys.readouterr())
    for bad in ("3/2", "0/2", "half"):
        assert main(["features", "--dataset", "shapes", "--data-dir", str(tiny_data), "--shard", bad, *common]) == 2
        captured = capsys.readouterr()
        _one_line_error(captured)
        assert "--shard takes I/N with 1 <= I <= N" in captured.err


def test_skipped_entries_are_one_line_and_listed_with_verbose(tiny_data, tmp_path, capsys):
    """A Karpathy-layout copy of the tiny set with one image gone from disk per split: train and evaluate go on."""
    images = []
    for split in ("train", "val", "test"):
        records = json.loads((tiny_data / f"{split}.json").read_text())["records"]
        for record in records:
            images.append(
                {
                    "filepath": "images",
                    "filename": Path(record["image"]).name,
                    "split": split,
                    "sentences": [{"raw": c} for c in record["captions"]],
                }
            )
        images.append(
            {
                "filepath": "images",
                "filename": f"gone_{split}.png",
                "split": split,
                "sentences": [{"raw": "a red circle"}],
            }
        )
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "images").symlink_to(tiny_data / "images")
    (tmp_path / "data" / "dataset_flickr8k.json").write_text(json.dumps({"images": images, "dataset": "flickr8k"}))
    run = tmp_path / "run"
    common = [
        "--preset",
        "tiny",
        "--dataset",
        "karpathy",
        "--data-dir",
        str(tmp_path / "data"),
        "--run",
        str(run),
        "--quiet",
    ]
    assert main(["train", *common, "--epochs", "1"]) == 0
    err = capsys.readouterr().err
    assert (
        "captioner: skipped 2 entries: 2 image not on disk (--verbose lists them)" in err
        and "gone_train.png" not in err
    )
    assert (
        json.loads((run / "metrics.json").read_text())["train"]["skipped"] == "skipped 2 entries: 2 image not on disk"
    )
    assert main(["evaluate", "--run", str(run), "--verbose"]) == 0
    captured = capsys.readouterr()
    assert "captioner: skipped 1 entries: 1 image not on disk\n" in captured.err and "gone_test.png" in captured.err
    assert "test (16 images" in captured.out


def _quiet_env(**extra):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CAPTIONER_TF_LOGS")}
    return {**env, **extra}


@pytest.mark.slow  # CI time: the suite runs twice (TensorFlow, JAX) within 10 minutes
def test_stderr_holds_no_tensorflow_start_up_noise(overfit_run, tiny_data):
    """Even with TensorFlow's C++ logging fully on, a caption run prints nothing on stderr; CAPTIONER_TF_LOGS=1
    shows what is hidden (so this test would see noise leak)."""
    image = str(sorted((tiny_data / "images").glob("test_*.png"))[0])
    command = [sys.executable, "-m", "captioner.cli", "caption", "--run", str(overfit_run), image]
    quiet = subprocess.run(
        command, capture_output=True, text=True, timeout=120, env=_quiet_env(TF_CPP_MIN_LOG_LEVEL="0")
    )
    assert quiet.returncode == 0 and quiet.stdout.strip() and quiet.stderr == ""
    loud = subprocess.run(command, capture_output=True, text=True, timeout=120, env=_quiet_env(CAPTIONER_TF_LOGS="1"))
    assert loud.returncode == 0 and loud.stdout == quiet.stdout and "cpu_feature_guard" in loud.stderr


@pytest.mark.slow  # two JAX processes (~30 s): the default suite stays under 10 minutes on the slower CPUs
def test_on_jax_caption_and_ask_answer_without_importing_tensorflow(overfit_run, vqa_run, tiny_data):
    """TensorFlow is only tf.data and the SavedModel export on JAX: a caption or a question reads its photo with PIL
    and never imports it (~5 s of every such command); stderr stays clean all the same."""
    image = str(sorted((tiny_data / "images").glob("test_*.png"))[0])
    code = (
        "import sys\nfrom captioner.cli import main\ncode = main(sys.argv[1:])\n"
        "print('tensorflow imported' if 'tensorflow' in sys.modules else 'no tensorflow')\nsys.exit(code)\n"
    )
    for argv in (
        ["caption", "--run", str(overfit_run), image],
        ["ask", "--run", str(vqa_run), image, "how many shapes are there?"],
    ):
        done = subprocess.run(
            [sys.executable, "-c", code, *argv],
            capture_output=True,
            text=True,
            timeout=120,
            env=_quiet_env(KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="0"),
        )
        assert done.returncode == 0 and done.stderr == "", done.stderr
        lines = done.stdout.splitlines()
        assert lines[-1] == "no tensorflow" and lines[0].strip(), done.stdout  # a caption or an answer, then the check


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["data", "shapes", "--out", "{tmp}/d", "--train", "2", "--val", "1", "--test", "1"],
        ["train", "--epochs", "many", "--run", "{tmp}/r"],
        ["caption"],
        ["no-such-command"],
    ],
)
def test_help_data_and_usage_errors_never_import_tensorflow(argv, tmp_path):
    code = (
        "import sys\nfrom captioner.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported'\n"
    )
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60, env=_quiet_env()
    )
    assert done.returncode == 0, done.stderr
