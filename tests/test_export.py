"""`captioner export`: a SavedModel that captions encoded images in a process where captioner cannot be imported."""

import json
import os
import subprocess
import sys

import keras
import pytest

from captioner.cli import main

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="export writes a TensorFlow SavedModel")

# Run in a fresh interpreter, outside the repository, with captioner made unimportable.
LOAD = """
import json, sys
sys.modules["captioner"] = None  # any `import captioner...` now fails: the export must not need it
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
data = [open(path, "rb").read() for path in sys.argv[2:]]
out = serve(images=tf.constant(data))
print(json.dumps({"captions": [c.decode() for c in out["captions"].numpy()], "tokens": out["tokens"].numpy().tolist()}))
"""


def test_the_export_captions_as_the_cli_does_without_captioner(overfit_run, tiny_data, tmp_path, capsys):
    paths = [str(p) for p in sorted((tiny_data / "images").glob("test_*.png"))[:6]]
    out = tmp_path / "exported"
    assert main(["export", "--run", str(overfit_run), "--out", str(out), "--beam-size", "3"]) == 0
    assert (out / "saved_model.pb").is_file() and "wrote" in capsys.readouterr().out
    assert main(["caption", "--run", str(overfit_run), "--json", "--beam-size", "3", *paths]) == 0
    expected = [r["caption"] for r in json.loads(capsys.readouterr().out)]

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", LOAD, str(out), *paths], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["captions"] == expected and all(expected)

    # Exporting again replaces the folder whole; nothing half-written is left beside it.
    assert main(["export", "--run", str(overfit_run), "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]


def test_export_of_a_vqa_run_is_a_one_line_error(vqa_run, tmp_path, capsys):
    assert main(["export", "--run", str(vqa_run), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "VQA export is not built yet" in err and not (tmp_path / "x").exists()
