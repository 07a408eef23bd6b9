"""Loading a run directory refuses what it cannot trust, each with its own message."""

import json
import shutil

import h5py
import keras
import numpy as np
import pytest

from captioner.errors import CaptionerError
from captioner.run import load_run


def _copy(run, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(run, target)
    return target


def test_a_good_run_loads(overfit_run):
    run = load_run(overfit_run)
    assert run.model.decoder.vocab_size == len(run.vocab)


def test_hdf5_model_is_refused(overfit_run, tmp_path):
    run = _copy(overfit_run, tmp_path, "h5")
    with h5py.File(run / "model.keras", "w") as handle:
        handle.attrs["model_config"] = "{}"
    with pytest.raises(CaptionerError, match="HDF5"):
        load_run(run)


def test_lambda_layer_is_refused(overfit_run, tmp_path):
    run = _copy(overfit_run, tmp_path, "lambda")
    inputs = keras.Input((3,))
    keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2)(inputs)).save(run / "model.keras")
    with pytest.raises(CaptionerError, match="Lambda"):
        load_run(run)


def test_flipped_byte_is_refused(overfit_run, tmp_path):
    run = _copy(overfit_run, tmp_path, "flipped")
    data = bytearray((run / "model.keras").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (run / "model.keras").write_bytes(bytes(data))
    with pytest.raises(CaptionerError):
        load_run(run)


def test_duplicate_vocabulary_is_refused(overfit_run, tmp_path):
    run = _copy(overfit_run, tmp_path, "dupes")
    payload = json.loads((run / "vocab.json").read_text())
    payload["words"].append(payload["words"][5])
    (run / "vocab.json").write_text(json.dumps(payload))
    with pytest.raises(CaptionerError, match="duplicate"):
        load_run(run)


def test_a_run_of_another_task_is_refused(overfit_run):
    with pytest.raises(CaptionerError, match="caption run, not a vqa run"):
        load_run(overfit_run, task="vqa")
