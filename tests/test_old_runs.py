"""Runs saved before settings were renamed (one name, one meaning) still load and compute what they computed."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from captioner.config import RunConfig, apply_overrides, preset, upgraded

OLD = Path(__file__).parent / "data" / "runs_480c246"


@pytest.fixture(scope="module")
def old_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("old")
    for name in ("caption", "vqa"):
        shutil.copytree(OLD / name, root / name)
    return root


def test_runs_saved_by_480c246_load_and_give_the_same_logits(old_runs):
    from captioner.run import load_run

    reference = json.loads((OLD / "reference.json").read_text())
    caption = load_run(old_runs / "caption")
    assert caption.config.model.state_init == "grid_mean"  # was model.init_from
    assert caption.model.decoder.state_init == "grid_mean"  # the layer's saved config said init_from too
    rng = np.random.default_rng(0)  # the inputs reference.json was computed on (its README)
    size = caption.model.encoder.image_size
    images = rng.integers(0, 256, (2, size, size, 3)).astype("uint8")
    tokens = np.array([[[1, 4, 5, 6, 7]], [[1, 8, 9, 4, 2]]], np.int32)
    logits = np.asarray(caption.model({"images": images, "tokens": tokens}, training=False))
    np.testing.assert_allclose(logits, reference["caption_logits"], atol=1e-4)

    vqa = load_run(old_runs / "vqa", task="vqa")
    assert vqa.config.model.encoder_trainable is True  # was vqa.fine_tune_encoder (with vqa.encoder_from)
    assert not hasattr(vqa.config.vqa, "fine_tune_encoder")
    questions = np.array([[[4, 5, 6, 0]], [[7, 8, 0, 0]]], np.int32)
    answers = np.asarray(vqa.model({"images": images, "questions": questions}, training=False))
    np.testing.assert_allclose(answers, reference["vqa_logits"], atol=1e-4)


def test_old_names_map_to_new_ones():
    old = preset("shapes-vqa").to_dict()
    old["model"]["init_from"] = old["model"].pop("state_init")
    old["model"]["init_from"] = "pooled"
    for encoder_from, fine_tune, expected in [("runs/c", True, True), ("runs/c", False, False), (None, False, None)]:
        values = json.loads(json.dumps(old))
        values["model"]["encoder_trainable"] = None
        values["vqa"].update(encoder_from=encoder_from, fine_tune_encoder=fine_tune)
        config = RunConfig.from_dict(values)
        assert config.model.state_init == "pooled" and config.model.encoder_trainable is expected
    assert "init_from" not in upgraded(old)["model"] and old["model"]["init_from"] == "pooled"  # the input is kept
    config = apply_overrides(preset("tiny"), {"model.init_from": "grid_mean", "vqa.fine_tune_encoder": "true"})
    assert config.model.state_init == "grid_mean" and config.model.encoder_trainable is True


@pytest.mark.parametrize("command", ["train", "train-vqa"])
def test_fine_tune_encoder_means_one_thing_in_both_commands(command, tmp_path):
    from captioner.cli.commands import _configure, config_keys
    from captioner.cli.parser import CAPTION, VQA, build_parser

    task = CAPTION if command == "train" else VQA
    base = [command, "--run", str(tmp_path / "r")]
    for extra, expected in [([], None), (["--fine-tune-encoder"], True)]:
        args = build_parser().parse_args(base + extra)
        config = _configure(args, "tiny", config_keys(task), {})
        assert config.model.encoder_trainable is expected


@pytest.mark.parametrize("task", ["caption", "vqa"])
def test_a_request_saved_before_the_renames_resumes_with_no_change(task):
    """request.json of a run started by 480c246, compared the way a resume compares it with the same command today."""
    from captioner.config import resume_changes, upgraded_flat
    from captioner.train import _as_requested

    asked = json.loads((OLD / task / "request.json").read_text())
    assert "model.init_from" in asked  # written before the rename
    nested: dict = {}
    for key, value in asked.items():
        section, dot, name = key.partition(".")
        nested.setdefault(section, {})[name] = value if dot else None
    today = RunConfig.from_dict(
        {k: (v if k in ("data", "model", "train", "decode", "vqa") else asked[k]) for k, v in nested.items()}
    )
    allowed, refused = resume_changes(upgraded_flat(asked), _as_requested(today))
    assert not refused and not allowed
