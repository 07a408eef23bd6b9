"""End to end on a tiny model: train, reload, caption, score."""

import json

import numpy as np
import pytest
from conftest import tiny_config

from captioner.config import DecodeConfig
from captioner.evaluation.evaluate import evaluate, generate_captions
from captioner.generation.decoding import CaptionGenerator
from captioner.run import load_run


def test_run_directory_describes_itself(overfit_run):
    for name in ("model.keras", "vocab.json", "config.json", "history.json", "metrics.json"):
        assert (overfit_run / name).is_file(), name
    config = json.loads((overfit_run / "config.json").read_text())
    assert config["model"]["decoder"] == "show-tell" and config["data"]["dataset"] == "shapes"
    # Every "auto" setting is written out as what was built, not left as null.
    assert (
        config["model"]["encoder_trainable"],
        config["model"]["state_init"],
        config["model"]["encoder_pooling"],
    ) == (
        True,
        "pooled",
        "flatten",
    )
    assert config["model"]["precision"] in ("float32", "mixed_bfloat16")
    history = json.loads((overfit_run / "history.json").read_text())
    assert len(history["loss"]) == len(history["val_loss"]) == 150
    metrics = json.loads((overfit_run / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["train"]["images_per_second"] > 0
    assert not [p for p in overfit_run.iterdir() if ".tmp" in p.name]  # no temporary files left behind


def test_model_overfits_a_tiny_training_set(overfit_run):
    run = load_run(overfit_run)
    result = evaluate(run, split="train")
    assert result["bleu4"] > 0.9, result
    history = json.loads((overfit_run / "history.json").read_text())
    assert history["loss"][-1] < 0.5 * history["loss"][0]


def test_different_scenes_get_different_captions(overfit_run):
    run = load_run(overfit_run)
    result = evaluate(run, split="train")
    assert result["distinct_captions"] > 0.5  # a collapsed model gives one caption to all 32 images


@pytest.mark.backends
def test_save_load_gives_identical_captions(overfit_run, tiny_data):
    run = load_run(overfit_run)
    again = load_run(overfit_run)
    paths = sorted(str(p) for p in (tiny_data / "images").glob("test_*.png"))
    first = generate_captions(CaptionGenerator(run.model, run.vocab, DecodeConfig(max_length=20, beam_size=1)), paths)
    second = generate_captions(
        CaptionGenerator(again.model, again.vocab, DecodeConfig(max_length=20, beam_size=1)), paths
    )
    assert first == second and all(first)


@pytest.mark.slow  # CI time: the suite runs twice (TensorFlow, JAX) within 10 minutes
def test_same_seed_trains_the_same_model(tiny_data, tmp_path):
    from captioner.train import train

    config = tiny_config(tiny_data, **{"train.epochs": "1", "train.max_train_images": "16"})
    train(config, tmp_path / "a", verbose=0)
    train(config, tmp_path / "b", verbose=0)
    a, b = load_run(tmp_path / "a"), load_run(tmp_path / "b")
    for x, y in zip(a.model.weights, b.model.weights):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=1e-6)
