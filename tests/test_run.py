"""Loading a run directory refuses what it cannot trust, each with its own message."""

import json
import shutil

import h5py
import keras
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


def _flip_middle_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _swap_two_words(path):
    payload = json.loads(path.read_text())
    payload["words"][4], payload["words"][5] = payload["words"][5], payload["words"][4]
    path.write_text(json.dumps(payload))


def _change_a_setting(path):
    payload = json.loads(path.read_text())
    payload["model"]["hidden_dim"] += 1
    path.write_text(json.dumps(payload))


@pytest.mark.parametrize(
    "name,change",
    [("model.keras", _flip_middle_byte), ("vocab.json", _swap_two_words), ("config.json", _change_a_setting)],
)
def test_a_changed_file_is_refused_by_the_manifest(overfit_run, tmp_path, name, change):
    run = _copy(overfit_run, tmp_path, "changed")
    change(run / name)
    with pytest.raises(CaptionerError, match=f"{name} does not match manifest.json"):
        load_run(run)


def test_manifest_lists_every_loaded_file(overfit_run):
    manifest = json.loads((overfit_run / "manifest.json").read_text())
    assert set(manifest["sha256"]) == {"model.keras", "vocab.json", "config.json"}
    assert all(len(hashes) == 1 for hashes in manifest["sha256"].values())


def test_a_kill_during_a_model_save_leaves_a_loadable_run(overfit_run, tmp_path):
    """The moment between the manifest write and the rename: old model, both hashes accepted."""
    from captioner.run import write_manifest

    run = _copy(overfit_run, tmp_path, "killed")
    write_manifest(run, also_accept={"model.keras": "0" * 64})  # state right before os.replace of a new model
    assert load_run(run).model is not None


def test_duplicate_vocabulary_is_refused(overfit_run, tmp_path):
    run = _copy(overfit_run, tmp_path, "dupes")
    payload = json.loads((run / "vocab.json").read_text())
    payload["words"].append(payload["words"][5])
    (run / "vocab.json").write_text(json.dumps(payload))
    from captioner.run import write_manifest

    write_manifest(run)  # a vocabulary that is consistent with the manifest but invalid in itself
    with pytest.raises(CaptionerError, match="duplicate"):
        load_run(run)


def test_a_run_of_another_task_is_refused(overfit_run):
    with pytest.raises(CaptionerError, match="caption run, not a vqa run"):
        load_run(overfit_run, task="vqa")


@pytest.mark.slow  # over 7 s: the default suite stays under 10 minutes (BENCHMARKS.md, "Test suite")
def test_kill_minus_nine_during_model_saves_leaves_a_loadable_run(overfit_run, tmp_path):
    import subprocess
    import sys
    import time

    run = _copy(overfit_run, tmp_path, "saving")
    code = (
        "from captioner.run import load_run, save_model\n"
        f"run = load_run({str(run)!r})\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    save_model(run.model, run.path / 'model.keras')\n"
    )
    for delay in (0.03, 0.17, 0.41):  # different moments of a save
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        child.kill()
        child.wait()
        assert load_run(run).model is not None
