"""One resolve-and-validate step: a bad training request is one line before anything is read or written, and every
"auto" comes out written, each with its reason."""

import pytest

from captioner.cli import main
from captioner.config import apply_overrides, preset
from captioner.errors import CaptionerError
from captioner.resolve import Machine, check, resolve

BAD = [
    ("model.cell", "transformer", "unknown cell 'transformer'"),
    ("model.num_layers", "5", "num_layers must be between 1 and 4"),
    ("model.decoder", "transformer", "unknown --decoder"),
    ("model.attention", "sparse", "unknown attention 'sparse'"),
    ("model.state_init", "zeros", "unknown model.state_init"),
    ("model.encoder", "vgg99", "unknown encoder 'vgg99'"),
    ("model.precision", "half", "unknown model.precision 'half'"),
    ("model.fine_tune_blocks", "-1", "--fine-tune-blocks must be 0 or more"),
    ("model.fine_tune_blocks", "2", "the small CNN trains whole"),
    ("train.monitor", "val_bleu", "unknown train.monitor"),
    ("train.objective", "rl", "unknown --objective 'rl'"),
    ("train.objective", "scst", "add --init-from RUN"),
    ("decode.sampler", "nucleus", "unknown sampler 'nucleus'"),
    ("decode.top_k", "0", "--top-k must be at least 1"),
    ("decode.num_captions", "2", "greedy decoding gives one caption"),
]


@pytest.mark.parametrize("key,value,expected", BAD, ids=[f"{k}={v}" for k, v, _ in BAD])
def test_a_bad_setting_is_one_line_and_writes_nothing(key, value, expected, tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    extra = {
        "decode.num_captions": ["--set", "decode.beam_size=1"],
        "decode.top_k": ["--set", "decode.sampler=sampling"],
    }
    extra = extra.get(key, [])
    args = ["train", "--preset", "tiny", "--data-dir", str(tiny_data), "--run", str(run), "--set", f"{key}={value}"]
    assert main(args + extra) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and expected in err, err
    assert not run.exists() or [p.name for p in run.iterdir()] in ([], [".lock"])


def test_several_devices_refuse_what_they_cannot_train():
    scst = apply_overrides(
        preset("tiny"), {"train.objective": "scst", "train.init_from": "runs/x", "train.monitor": "val_cider"}
    )
    with pytest.raises(CaptionerError, match="trains on one device"):
        check(scst, Machine("jax", replicas=2))
    hard = apply_overrides(preset("tiny"), {"model.decoder": "attention", "model.attention": "hard"})
    check(hard, Machine("jax", replicas=2))
    with pytest.raises(CaptionerError, match="JAX backend only"):
        check(hard, Machine("tensorflow", replicas=2))


def test_every_auto_is_written_out_with_its_reason(monkeypatch):
    from captioner.precision import AUTO_ENV

    monkeypatch.delenv(AUTO_ENV, raising=False)  # the `cpu` kind's own choices, whatever the suite forces
    request = preset("flickr8k")  # a frozen backbone with attention: every "auto" left to resolve
    assert request.model.state_init is None and request.model.encoder_trainable is None
    config = resolve(request, Machine(hardware="cpu"))
    assert (config.model.encoder_trainable, config.model.state_init, config.model.encoder_pooling) == (
        False,
        "grid_mean",
        "avg",
    )
    assert config.model.precision == "float32" and config.data.feature_precision == "float32"
    assert set(config.reasons) == {
        "model.encoder_trainable",
        "model.state_init",
        "model.encoder_pooling",
        "model.precision",
        "data.feature_precision",
    }
    assert all(config.reasons.values())
    given = apply_overrides(preset("flickr8k"), {"model.state_init": "pooled", "model.precision": "float32"})
    config = resolve(given, Machine(hardware="cpu"))
    assert config.model.state_init == "pooled" and "model.state_init" not in config.reasons
    assert "model.precision" not in config.reasons and request.reasons == {}  # the request is not changed
