"""Decoder variants as run settings (cell, num_layers): they train, overfit a tiny set, round-trip through `.keras`,
run beam search, and export (SavedModel and TFLite) with the same captions."""

import json

import numpy as np
import pytest

from captioner.cli import main
from captioner.config import DecodeConfig
from captioner.generation.decoding import CaptionGenerator
from captioner.data.images import load_image
from captioner.run import load_run

from conftest import FULL, tiny_config


def _gru_stack(tiny_data, folder, epochs: int):
    """Show-Attend-Tell on a 2-layer GRU, trained on the 32 training images (validated on the same)."""
    from captioner.train import train

    config = tiny_config(tiny_data, **{"model.cell": "gru", "model.num_layers": "2", "model.decoder": "attention",
                                       "model.attention_dim": "16", "model.hidden_dim": "64", "model.feature_dim": "64",
                                       "train.epochs": str(epochs), "train.val_split": "train", "train.patience": str(epochs),
                                       "train.learning_rate": "0.003", "train.batch_size": "8"})
    train(config, folder, verbose=0)
    return folder


@pytest.fixture(scope="module")
def gru_stack_run(tiny_data, tmp_path_factory):
    return _gru_stack(tiny_data, tmp_path_factory.mktemp("runs") / "gru2", epochs=3)


def _images(run, tiny_data, split="train", count=8):
    paths = sorted((tiny_data / "images").glob(f"{split}_*.png"))[:count]
    return np.stack([load_image(p, run.model.encoder.image_size) for p in paths]), paths


@pytest.mark.slow  # 80 epochs
@pytest.mark.skipif(not FULL, reason="memorisation is asserted on TensorFlow")
def test_a_stacked_gru_memorises_the_tiny_set(tiny_data, tmp_path):
    gru_stack_run = _gru_stack(tiny_data, tmp_path / "gru2", epochs=80)
    run = load_run(gru_stack_run)
    assert run.config.model.cell == "gru" and run.config.model.num_layers == 2 and run.model.decoder.state_count == 2
    history = json.loads((gru_stack_run / "history.json").read_text())
    assert min(history["loss"]) < 0.5 * history["loss"][0]
    images, paths = _images(run, tiny_data)
    records = {r["image"]: r["captions"] for r in json.loads((tiny_data / "train.json").read_text())["records"]}
    captions = CaptionGenerator(run.model, run.vocab, DecodeConfig(max_length=20, beam_size=3))(images).captions
    hits = sum(caption in [" ".join(c.lower().split()) for c in records[f"images/{p.name}"]] for caption, p in zip(captions, paths))
    assert hits >= 5, captions  # most captions are one of the image's own references, word for word


def test_a_variant_reloads_beams_and_exports_with_the_same_captions(gru_stack_run, tiny_data, tmp_path):
    from captioner.serving.export import tflite_greedy

    run = load_run(gru_stack_run)
    images, _ = _images(run, tiny_data, "test")
    greedy = DecodeConfig(max_length=run.config.decode.max_length, beam_size=1)
    here = CaptionGenerator(run.model, run.vocab, greedy)(images)
    again = load_run(gru_stack_run)
    np.testing.assert_array_equal(CaptionGenerator(again.model, again.vocab, greedy)(images).tokens, here.tokens)  # save -> load
    beams = CaptionGenerator(run.model, run.vocab, DecodeConfig(max_length=20, beam_size=3, num_captions=3))(images).beams
    assert all(len(rows) == 3 for rows in beams)
    assert main(["export", "--run", str(gru_stack_run), "--out", str(tmp_path / "lite"), "--format", "tflite"]) == 0
    assert tflite_greedy(tmp_path / "lite", images) == here.captions


@pytest.mark.parametrize("flags, message", [(["--num-layers", "0"], "num_layers must be between 1 and 4 (got 0)"),
                                            (["--num-layers", "9"], "num_layers must be between 1 and 4 (got 9)"),
                                            (["--cell", "rnn"], "unknown cell 'rnn'; choose lstm or gru")])
def test_impossible_decoders_on_the_command_line_are_one_line(tiny_data, tmp_path, capsys, flags, message):
    args = ["train", "--preset", "tiny", "--data-dir", str(tiny_data), "--run", str(tmp_path / "run"), "--quiet", *flags]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    assert not (tmp_path / "run" / "model.keras").exists()
