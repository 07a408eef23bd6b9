"""Precision: float32 or mixed (bfloat16/float16 compute, float32 variables), chosen per run, loadable under any."""

import json

import keras
import numpy as np
import pytest

from captioner.cli import main
from captioner.config import DecodeConfig
from captioner.precision import (
    AUTO_ENV,
    AUTO_RULES,
    HARDWARE,
    PRECISIONS,
    WORKS,
    choose_auto,
    hardware,
    resolve_precision,
)
from captioner.run import load_config, load_run


def test_auto_follows_the_rule_table_and_unknown_names_are_refused(monkeypatch):
    monkeypatch.delenv(AUTO_ENV, raising=False)
    for work in WORKS:
        expected, _ = AUTO_RULES.get((hardware(), work), ("float32", ""))
        choice = choose_auto(work)
        assert resolve_precision("auto", work) == choice.precision == expected
        assert work in choice.reason and hardware() in choice.reason
    assert [resolve_precision(name) for name in PRECISIONS] == list(PRECISIONS)
    with pytest.raises(ValueError, match="unknown precision 'half'"):
        resolve_precision("half")
    with pytest.raises(ValueError, match="unknown kind of work"):
        choose_auto("painting")


def test_the_rules_name_only_known_hardware_work_and_precisions():
    for (kind, work), (precision, why) in AUTO_RULES.items():
        assert kind in HARDWARE and work in WORKS and precision in PRECISIONS and why


@pytest.mark.parametrize("forced", ["float32", "mixed_bfloat16"])
def test_the_environment_forces_what_auto_becomes(monkeypatch, forced):
    monkeypatch.setenv(AUTO_ENV, forced)
    assert {resolve_precision("auto", work) for work in WORKS} == {forced}
    assert resolve_precision("float32", "train_cnn") == "float32"  # an explicit precision is never overridden
    monkeypatch.setenv(AUTO_ENV, "half")
    with pytest.raises(ValueError, match=AUTO_ENV):
        resolve_precision("auto", "decode")


@pytest.mark.parametrize("forced", ["float32", "mixed_bfloat16"])
def test_a_run_records_what_auto_became_and_why(tiny_data, tmp_path, monkeypatch, capsys, forced):
    monkeypatch.setenv(AUTO_ENV, forced)
    run = tmp_path / "run"
    args = [
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
        "--precision",
        "auto",
        "--max-train-images",
        "8",
        "--set",
        "train.max_val_images=8",
    ]
    assert main(args) == 0
    model = json.loads((run / "config.json").read_text())["model"]
    assert model["precision"] == forced and AUTO_ENV in model["precision_reason"]
    assert f"precision {forced} (auto forced" in capsys.readouterr().out  # the training log says it too
    assert load_run(run).model.decoder.lstm.compute_dtype == forced.removeprefix("mixed_")


def test_precision_is_passed_to_every_layer_and_never_set_globally(tmp_path):
    """The builders pass the precision to every layer inside the model (the backbone's, the LSTM's cell) and leave
    Keras's global policy alone; a saved run keeps its policy in its file, and `load_run` applies the one asked for."""
    from captioner.config import preset
    from captioner.models.networks import build_caption_model

    before = keras.config.dtype_policy().name
    config = preset("tiny")
    config.model.decoder = "attention"
    model = build_caption_model(config.model, 20, 32, "mixed_bfloat16")
    assert keras.config.dtype_policy().name == before
    inner = [layer for layer in model._flatten_layers() if not isinstance(layer, keras.layers.InputLayer)]
    assert len(inner) > 10 and {layer.dtype_policy.name for layer in inner} == {"mixed_bfloat16"}
    assert model.decoder.lstm.use_cudnn is False and {w.dtype for w in model.weights} == {"float32"}
    assert keras.layers.Dense(2).dtype_policy.name == before
    twin = build_caption_model(config.model, 20, 32, "float32")
    assert twin.decoder.lstm.use_cudnn == "auto" and twin.decoder.output_projection.compute_dtype == "float32"


def _train(tiny_data, run, precision):
    args = [
        "train",
        "--preset",
        "tiny",
        "--data-dir",
        str(tiny_data),
        "--run",
        str(run),
        "--epochs",
        "12",
        "--quiet",
        "--precision",
        precision,
        "--set",
        "train.val_split=train",
        "--set",
        "train.patience=12",
    ]
    assert main(args) == 0
    return run


@pytest.fixture(scope="module")
def bf16_run(tiny_data, tmp_path_factory):
    return _train(tiny_data, tmp_path_factory.mktemp("precision") / "bf16", "mixed_bfloat16")


@pytest.mark.slow  # CI time: the suite runs twice (TensorFlow, JAX) within 10 minutes
def test_a_mixed_bfloat16_run_learns_as_float32_does_with_float32_variables(bf16_run, tiny_data, tmp_path):
    assert json.loads((bf16_run / "config.json").read_text())["model"]["precision"] == "mixed_bfloat16"
    run = load_run(bf16_run)
    decoder = run.model.decoder
    assert decoder.lstm.compute_dtype == "bfloat16" and decoder.output_projection.compute_dtype == "bfloat16"
    assert {w.dtype for w in run.model.weights} == {"float32"}  # variables stay float32: loadable under any precision
    assert keras.config.dtype_policy().name == "float32"  # training left the global policy as it found it
    mixed = json.loads((bf16_run / "history.json").read_text())["loss"]
    full = json.loads((_train(tiny_data, tmp_path / "fp32", "float32") / "history.json").read_text())["loss"]
    assert np.all(np.isfinite(mixed)) and mixed[-1] < 0.8 * mixed[0]
    assert abs(mixed[-1] - full[-1]) < 0.05 * full[-1], (mixed, full)  # the same recipe, the same loss curve


def test_a_run_captions_under_every_precision(bf16_run, tiny_data, capsys):
    images = [str(p) for p in sorted((tiny_data / "images").glob("train_*.png"))[:4]]
    captions = {}
    for precision in PRECISIONS:
        assert main(["caption", "--run", str(bf16_run), "--precision", precision, "--json", *images]) == 0
        captions[precision] = [r["caption"] for r in json.loads(capsys.readouterr().out)]
    assert all(all(c for c in found) for found in captions.values())
    # The run's own precision: the same tokens as the model right after training would give (save -> load exact).
    again = load_run(bf16_run)
    assert again.model.decoder.lstm.compute_dtype == "bfloat16"
    assert load_run(bf16_run, precision="float32").model.decoder.lstm.compute_dtype == "float32"


def test_runs_written_before_the_setting_load_as_float32(overfit_run, tmp_path):
    raw = json.loads((overfit_run / "config.json").read_text())
    assert raw["model"]["precision"] in PRECISIONS  # new runs store what they resolved "auto" to
    del raw["model"]["precision"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert load_config(tmp_path).model.precision == "float32"


@pytest.mark.parametrize("precision", ["mixed_bfloat16", pytest.param("mixed_float16", marks=pytest.mark.slow)])
@pytest.mark.parametrize("decoder", ["show-tell", "attention"])
def test_every_decoder_takes_a_training_step_under_mixed_precision(decoder, precision):
    """One step of each architecture under each mixed policy: finite loss, float32 variables (catches a
    float32 constant meeting a half-precision tensor, as the attention penalty once did)."""
    from captioner.config import preset
    from captioner.models.networks import build_caption_model

    config = preset("tiny")
    config.model.decoder = decoder
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (4, 32, 32, 3)).astype("uint8")
    tokens = rng.integers(1, 20, (4, 2, 6)).astype("int32")
    model = build_caption_model(config.model, 20, 32, precision)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
    )
    loss = model.train_on_batch({"images": images, "tokens": tokens}, tokens)
    assert np.isfinite(loss) and {w.dtype for w in model.weights} == {"float32"}
    assert model.decoder.output_projection.compute_dtype == precision.removeprefix("mixed_")


def test_a_mixed_precision_run_exports_in_float32_to_savedmodel_and_tflite(bf16_run, tiny_data, tmp_path, capsys):
    """On every CPU: the export computes in float32 (TFLite has no bfloat16 convolutions), so a bfloat16 run
    exports, and its greedy captions are those of `caption --precision float32`."""
    from captioner.data.images import load_image
    from captioner.generation.decoding import CaptionGenerator
    from captioner.serving.export import tflite_greedy

    assert main(["export", "--run", str(bf16_run), "--out", str(tmp_path / "lite"), "--format", "tflite"]) == 0
    assert main(["export", "--run", str(bf16_run), "--out", str(tmp_path / "saved")]) == 0
    run = load_run(bf16_run, precision="float32")
    paths = sorted((tiny_data / "images").glob("test_*.png"))[:6]
    images = np.stack([load_image(p, run.model.encoder.image_size) for p in paths])
    expected = CaptionGenerator(
        run.model, run.vocab, DecodeConfig(max_length=run.config.decode.max_length, beam_size=1)
    )(images).captions
    assert tflite_greedy(tmp_path / "lite", images) == expected and all(expected)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        served = tf.saved_model.load(str(tmp_path / "saved")).signatures["serving_default"]
        data = tf.constant([p.read_bytes() for p in paths])
        assert all(c.decode() for c in served(images=data)["captions"].numpy())


def test_a_conversion_that_cannot_work_is_one_line(bf16_run, tmp_path):
    """TFLite cannot convert bfloat16 convolutions: asked to (a run loaded in bfloat16), it is a one-line error."""
    from captioner.errors import CaptionerError
    from captioner.serving.export import export_tflite

    if keras.backend.backend() != "tensorflow":
        pytest.skip("TFLite export needs TensorFlow")
    with pytest.raises(CaptionerError) as caught:
        export_tflite(load_run(bf16_run, precision="mixed_bfloat16"), tmp_path / "lite")
    message = str(caught.value)
    assert "\n" not in message and "float32" in message and not (tmp_path / "lite").exists()


@pytest.mark.parametrize(
    "preset_name,settings,work",
    [
        ("flickr8k", {}, "train_cached"),  # a frozen backbone: the decoder trains on cached features
        ("flickr8k", {"model.encoder_trainable": True}, "train_cnn"),  # fine-tuned: pixels through the backbone
        ("shapes", {}, "train_cnn"),
        ("shapes-vqa", {}, "train_cnn"),
    ],
)
def test_a_run_is_resolved_for_its_kind_of_training(monkeypatch, preset_name, settings, work):
    from captioner.config import preset, with_settings
    from captioner.models.networks import training_work
    from captioner.resolve import resolve

    monkeypatch.delenv(AUTO_ENV, raising=False)
    resolved = resolve(with_settings(preset(preset_name), settings))
    assert training_work(resolved) == work
    assert resolved.model.precision == choose_auto(work).precision and work in resolved.model.precision_reason
    assert resolved.reasons["model.precision"] == resolved.model.precision_reason
    assert resolved.data.feature_precision == choose_auto("features").precision
    explicit = resolve(with_settings(preset(preset_name), {**settings, "model.precision": "float32"}))
    assert explicit.model.precision == "float32" and explicit.model.precision_reason == ""  # asked for: no reason
    assert "model.precision" not in explicit.reasons


def test_a_bad_forced_precision_is_one_line_before_any_work(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(AUTO_ENV, "half")
    args = [
        "train",
        "--preset",
        "tiny",
        "--data-dir",
        str(tiny_data),
        "--run",
        str(tmp_path / "run"),
        "--epochs",
        "1",
        "--quiet",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and AUTO_ENV in err and "Traceback" not in err and not (tmp_path / "run").exists()
