"""`captioner export`: a SavedModel that captions encoded images in a process where captioner cannot be imported."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from captioner.cli import main
from captioner.config import DecodeConfig

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


@pytest.mark.slow  # over 7 s: the default suite stays under 10 minutes (BENCHMARKS.md, "Test suite")
def test_the_export_captions_as_the_cli_does_without_captioner(overfit_run, tiny_data, tmp_path, capsys):
    paths = [str(p) for p in sorted((tiny_data / "images").glob("test_*.png"))[:6]]
    out = tmp_path / "exported"
    assert main(["export", "--run", str(overfit_run), "--out", str(out), "--beam-size", "3"]) == 0
    assert (out / "saved_model.pb").is_file() and "wrote" in capsys.readouterr().out
    assert main(["caption", "--run", str(overfit_run), "--json", "--beam-size", "3", *paths]) == 0
    expected = [r["caption"] for r in json.loads(capsys.readouterr().out)]

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", LOAD, str(out), *paths],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["captions"] == expected and all(expected)

    # Exporting again replaces the folder whole; nothing half-written is left beside it.
    assert main(["export", "--run", str(overfit_run), "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]


ASK = """
import json, sys
sys.modules["captioner"] = None
import tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
images = [open(path, "rb").read() for path in sys.argv[2::2]]
out = serve(images=tf.constant(images), questions=tf.constant(sys.argv[3::2]))
answers = [a.decode() for a in out["answers"].numpy()]
print(json.dumps({"answers": answers, "top": out["top_probabilities"].numpy().tolist()}))
"""


@pytest.mark.slow  # over 7 s: the default suite stays under 10 minutes (BENCHMARKS.md, "Test suite")
def test_a_vqa_export_answers_as_ask_does_without_captioner(vqa_run, tiny_data, tmp_path, capsys):
    out = tmp_path / "vqa-export"
    assert main(["export", "--run", str(vqa_run), "--out", str(out)]) == 0
    capsys.readouterr()
    records = json.loads((tiny_data / "train.json").read_text())["records"][:3]
    pairs = [(str(tiny_data / r["image"]), q["question"]) for r in records for q in r["qa"][:2]]
    pairs.append((pairs[0][0], "What COLOUR is the xyzzy?!"))  # mixed case, punctuation, an unknown word
    expected = []
    for image, question in pairs:
        assert main(["ask", "--run", str(vqa_run), "--json", image, question]) == 0
        answer = json.loads(capsys.readouterr().out)["answers"][0]
        expected.append((answer["answer"], [t["probability"] for t in answer["top"]]))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-c", ASK, str(out), *[x for pair in pairs for x in pair]],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert got["answers"] == [answer for answer, _ in expected]
    for row, (_, probabilities) in zip(got["top"], expected):
        assert row == pytest.approx(probabilities, abs=1e-4)


def test_an_export_that_cannot_be_written_is_one_line(overfit_run, tmp_path, capsys):
    (tmp_path / "file").write_text("in the way")
    assert main(["export", "--run", str(overfit_run), "--out", str(tmp_path / "file" / "model")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("captioner: error: cannot write") and "Traceback" not in err


def test_the_tflite_export_gives_the_greedy_captions(overfit_run, tiny_data, tmp_path, capsys):
    from captioner.data.images import load_image
    from captioner.generation.decoding import CaptionGenerator
    from captioner.run import load_run
    from captioner.serving.export import tflite_greedy

    assert main(["export", "--run", str(overfit_run), "--out", str(tmp_path / "lite"), "--format", "tflite"]) == 0
    run = load_run(overfit_run)
    paths = sorted((tiny_data / "images").glob("test_*.png"))[:8]
    images = np.stack([load_image(p, run.model.encoder.image_size) for p in paths])
    expected = CaptionGenerator(
        run.model, run.vocab, DecodeConfig(max_length=run.config.decode.max_length, beam_size=1)
    )(images).captions
    assert tflite_greedy(tmp_path / "lite", images) == expected and all(expected)
