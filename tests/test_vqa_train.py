"""VQA end to end on a tiny model: train, reload, answer, score; sharing a captioner's encoder."""

import json

import numpy as np
import pytest
from conftest import tiny_config
from decisions import assert_same_answers_where_clear, record_probabilities

from captioner.data import load_qa_split
from captioner.evaluation.evaluate import answer_records, evaluate_vqa
from captioner.generation.answering import Answerer
from captioner.run import load_run
from captioner.train import train


def test_vqa_run_directory_describes_itself(vqa_run):
    for name in (
        "model.keras",
        "vocab.json",
        "answers.json",
        "config.json",
        "history.json",
        "metrics.json",
        "manifest.json",
    ):
        assert (vqa_run / name).is_file(), name
    config = json.loads((vqa_run / "config.json").read_text())
    assert config["task"] == "vqa"
    run = load_run(vqa_run, task="vqa")  # config.json says what was built: the encoder's pooling, trainability
    assert config["model"]["encoder_pooling"] == run.model.encoder.pooling
    assert config["model"]["encoder_trainable"] == run.model.encoder.encoder_trainable
    assert "answers.json" in json.loads((vqa_run / "manifest.json").read_text())["sha256"]


def test_vqa_model_overfits_a_tiny_training_set(vqa_run):
    run = load_run(vqa_run, task="vqa")
    result = evaluate_vqa(run, split="train")
    assert result["accuracy"] > 0.9, result
    assert result["accuracy"] > result["blind_baselines"]["question_prior"] + 0.1
    assert set(result["by_question_type"]) >= {"color", "count", "exist"}


@pytest.mark.backends
def test_reloaded_run_answers_as_the_trained_model_did(vqa_run):
    run = load_run(vqa_run, task="vqa")
    records = load_qa_split("shapes", run.config.data.data_dir, "test")
    first = answer_records(Answerer(run.model, run.vocab, run.answers, run.config.vqa.max_question_length), records, 16)
    again = load_run(vqa_run, task="vqa")
    answerer = Answerer(again.model, again.vocab, again.answers, again.config.vqa.max_question_length)
    assert answer_records(answerer, records, 16, batch_size=5) == first  # batching does not change answers
    assert answerer.trace_count == 1  # one trace serves batches of 5 and the last, smaller one


def test_a_changed_answer_vocabulary_is_refused(vqa_run, tmp_path):
    import shutil

    from captioner.errors import CaptionerError

    copy = tmp_path / "run"
    shutil.copytree(vqa_run, copy)
    answers = json.loads((copy / "answers.json").read_text())
    answers["answers"][1], answers["answers"][2] = answers["answers"][2], answers["answers"][1]
    (copy / "answers.json").write_text(json.dumps(answers))
    with pytest.raises(CaptionerError, match="answers.json does not match manifest"):
        load_run(copy, task="vqa")


def test_init_from_a_vqa_run_copies_its_weights_and_vocabularies(vqa_run, tmp_path, capsys):
    """`train-vqa --init-from RUN` at learning rate 0 is RUN but for the batch norms' running statistics (one epoch
    moves them): every other weight and the vocabularies the same, and the same answers wherever RUN's are clear."""
    from captioner.cli import main

    copy = tmp_path / "copy"
    assert (
        main(
            [
                "train-vqa",
                "--init-from",
                str(vqa_run),
                "--run",
                str(copy),
                "--epochs",
                "1",
                "--learning-rate",
                "0",
                "--quiet",
            ]
        )
        == 0
    )
    source, started = load_run(vqa_run, task="vqa"), load_run(copy, task="vqa")
    assert json.loads((copy / "metrics.json").read_text())["train"]["init_from"] == str(vqa_run.resolve())
    assert (copy / "vocab.json").read_text() == (vqa_run / "vocab.json").read_text()
    assert (copy / "answers.json").read_text() == (vqa_run / "answers.json").read_text()
    assert started.config.vqa == source.config.vqa and started.config.train.learning_rate == 0
    kept = [(a, b) for a, b in zip(source.model.weights, started.model.weights) if "moving_" not in a.path]
    assert len(kept) == len(source.model.weights) - 2 * sum("moving_mean" in w.path for w in source.model.weights) > 0
    for a, b in kept:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    # Not one model (the moved statistics): the same answer wherever the source's is clear, close probabilities.
    records = load_qa_split("shapes", source.config.data.data_dir, "test")[:32]
    probabilities = [record_probabilities(r, records) for r in (source, started)]  # (32, num_answers) each
    assert_same_answers_where_clear(*probabilities, margin=0.1)
    np.testing.assert_allclose(probabilities[1], probabilities[0], atol=0.1)


def test_bad_vqa_init_from_inputs_are_one_line_and_write_nothing(vqa_run, overfit_run, tmp_path, capsys):
    from captioner.cli import main

    run = tmp_path / "new"
    for argv, expected in [
        (
            ["--init-from", str(overfit_run)],
            "is a caption run; a vqa run starts from a vqa run (a VQA run takes a caption run's encoder",
        ),
        (["--init-from", str(vqa_run), "--set", "vqa.fusion_dim=32"], "fixes vqa.fusion_dim (64 -> 32)"),
        (["--init-from", str(vqa_run), "--attention"], "fixes vqa.attention (False -> True)"),
        (["--init-from", str(vqa_run), "--preset", "tiny"], "drop --preset"),
        (["--init-from", str(vqa_run), "--run", str(vqa_run)], "is the run being trained"),
    ]:
        assert main(["train-vqa", "--run", str(run), *argv, "--quiet"]) != 0
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "Traceback" not in err and expected in err, err
    assert not run.exists()


def _vqa_config(tiny_data, **overrides):
    config = tiny_config(tiny_data, **{"train.epochs": "2", **overrides})
    config.task = "vqa"
    return config


@pytest.mark.slow  # CI time: the suite runs twice (TensorFlow, JAX) within 10 minutes
def test_encoder_from_a_caption_run_is_copied_and_frozen(overfit_run, tiny_data, tmp_path):
    caption = load_run(overfit_run)
    config = _vqa_config(tiny_data, **{"vqa.encoder_from": str(overfit_run)})
    train(config, tmp_path / "frozen", verbose=0)
    vqa = load_run(tmp_path / "frozen", task="vqa")
    assert not vqa.model.encoder.trainable
    for mine, theirs in zip(vqa.model.encoder.get_weights(), caption.model.encoder.get_weights()):
        np.testing.assert_array_equal(mine, theirs)
    config = _vqa_config(tiny_data, **{"vqa.encoder_from": str(overfit_run), "model.encoder_trainable": "true"})
    train(config, tmp_path / "tuned", verbose=0)
    tuned = load_run(tmp_path / "tuned", task="vqa")
    assert tuned.model.encoder.trainable
    changed = [
        not np.array_equal(a, b) for a, b in zip(tuned.model.encoder.get_weights(), caption.model.encoder.get_weights())
    ]
    assert any(changed)


@pytest.mark.slow  # CI time: the suite runs twice (TensorFlow, JAX) within 10 minutes
def test_question_only_model_ignores_the_image(tiny_data, tmp_path):
    train(_vqa_config(tiny_data, **{"vqa.use_image": "false"}), tmp_path / "blind", verbose=0)
    run = load_run(tmp_path / "blind", task="vqa")
    answerer = Answerer(run.model, run.vocab, run.answers, run.config.vqa.max_question_length)
    questions = answerer.question_array(
        [[answerer.encode("what color is the circle?"), answerer.encode("how many shapes are there?")]] * 2
    )
    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3)).astype(np.uint8)
    probabilities, _ = answerer(images, questions)
    np.testing.assert_allclose(probabilities[0], probabilities[1], rtol=1e-6, atol=1e-7)
    assert evaluate_vqa(run, "test")["use_image"] is False


@pytest.mark.slow  # CI time: the suite runs twice (TensorFlow, JAX) within 10 minutes
def test_vqa_v2_files_train_and_score_with_ten_answers(tmp_path):
    """VQA v2's layout end to end on files written here: majority answers train, ten answers score."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for subtype, images in (("train2014", range(1, 9)), ("val2014", range(9, 13))):
        (tmp_path / subtype).mkdir()
        questions, annotations = [], []
        for image_id in images:
            color = ("red", "blue")[image_id % 2]
            Image.new("RGB", (32, 32), color).save(tmp_path / subtype / f"COCO_{subtype}_{image_id:012d}.jpg")
            for number, (text, answer, kind) in enumerate(
                [("what color is it?", color, "other"), ("is it red?", "yes" if color == "red" else "no", "yes/no")]
            ):
                question_id = image_id * 10 + number
                questions.append({"image_id": image_id, "question": text, "question_id": question_id})
                given = [answer] * 8 + [str(rng.choice(["pink", "maybe"]))] * 2
                annotations.append(
                    {
                        "question_id": question_id,
                        "image_id": image_id,
                        "question_type": text.split()[0],
                        "answer_type": kind,
                        "multiple_choice_answer": answer,
                        "answers": [
                            {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(given)
                        ],
                    }
                )
        (tmp_path / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(json.dumps({"questions": questions}))
        (tmp_path / f"v2_mscoco_{subtype}_annotations.json").write_text(json.dumps({"annotations": annotations}))
    config = _vqa_config(
        tmp_path,
        **{
            "data.dataset": "vqa",
            "data.data_dir": str(tmp_path),
            "train.epochs": "40",
            "train.learning_rate": "0.01",
            "train.batch_size": "4",
            "train.patience": "40",
            "model.encoder_norm": "batch",
            "model.encoder_pooling": "avg",
        },
    )
    train(config, tmp_path / "run", verbose=0)
    run = load_run(tmp_path / "run", task="vqa")
    assert "pink" not in run.answers.answers  # the majority answer is the training target
    result = evaluate_vqa(run, split="val")
    assert result["questions"] == 8 and set(result["by_answer_type"]) == {"other", "yes/no"}
    # 8 of 10 annotators agree: a right answer scores 1 (min(7/3, 1) or min(8/3, 1) in every subset).
    assert result["accuracy"] in {i / 8 for i in range(9)}
    assert result["accuracy"] >= 0.75, result


@pytest.mark.backends
def test_any_number_of_questions_per_image_is_one_compilation_with_the_same_answers(vqa_run, tiny_data):
    """Under JAX the questions axis is padded like the batch axis (else every new count compiles again);
    on both backends the answers to a question do not depend on how many others come with it."""
    from captioner.data.images import load_image

    run = load_run(vqa_run, task="vqa")
    answerer = Answerer(run.model, run.vocab, run.answers, run.config.vqa.max_question_length)
    image = load_image(tiny_data / "images" / "test_00000.png", run.model.encoder.image_size)[
        None
    ]  # (1, size, size, 3)
    asked = ["what color is the circle", "how many shapes are there", "is there a square", "what shape is red"]
    encoded = [answerer.encode(q) for q in asked]
    alone, _ = answerer(image, answerer.question_array([encoded[:1]]))
    for count in (1, 2, 3, 4):
        probabilities, attention = answerer(image, answerer.question_array([encoded[:count]]))
        assert probabilities.shape[:2] == attention.shape[:2] == (1, count)
        np.testing.assert_allclose(probabilities[0, 0], alone[0, 0], atol=1e-5)
    assert answerer.trace_count == 1
