"""The shipped models (captioner/pretrained) and the fast path that runs them (captioner.generation.lite).

Most tests pack two tiny runs into a temporary folder of the shipped layout (`export_pretrained`) and point
$CAPTIONER_PRETRAINED_DIR at it: the fast path and the Keras path must give the same captions and answers (they are
the same model). The tests marked `shipped` use the models in the package itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from captioner import pretrained
from captioner.cli import main
from captioner.errors import CaptionerError

REPO = Path(__file__).resolve().parents[1]
# public domain (U.S. Navy), as matplotlib ships it
PHOTO = Path(__file__).resolve().parent / "data" / "grace_hopper.jpg"
SHIPPED = (pretrained.FOLDER / pretrained.MANIFEST).is_file()


@pytest.fixture(scope="module")
def packed(attention_run, vqa_run, tmp_path_factory):
    """The tiny attention run and the tiny VQA run's head on the caption run's encoder, packed as shipped."""
    from captioner.models.networks import build_vqa_model
    from captioner.run import Run, load_run
    from captioner.serving.export import export_pretrained

    caption = load_run(attention_run, precision="float32")
    vqa = load_run(vqa_run, task="vqa", precision="float32")
    config = dataclasses.replace(
        vqa.config,
        model=caption.config.model,
        data=dataclasses.replace(vqa.config.data, image_size=caption.config.data.image_size),
    )
    model = build_vqa_model(
        config, len(vqa.vocab), len(vqa.answers), caption.model.encoder.image_size, encoder=caption.model.encoder
    )
    shared = Run(vqa.path, config, vqa.vocab, model, vqa.answers)
    out = tmp_path_factory.mktemp("pretrained")
    decode = dataclasses.replace(caption.config.decode, beam_size=3, no_repeat_ngram=2)
    export_pretrained(caption, shared, out, decode)
    return out


@pytest.fixture
def shipped_here(packed, monkeypatch):
    monkeypatch.setenv(pretrained.FOLDER_ENV, str(packed))
    return packed


def _lite(folder: Path):
    from captioner.generation.lite import LiteAnswerer, LiteCaptioner, LiteEncoder

    encoder = LiteEncoder(folder / pretrained.ENCODER_FILE)
    return LiteCaptioner(folder / "caption", encoder), LiteAnswerer(folder / "vqa", encoder)


def _images(tiny_data: Path, count: int = 6) -> list[str]:
    return sorted(str(p) for p in (tiny_data / "images").glob("test_*.png"))[:count]


@pytest.mark.parametrize(
    "settings",
    [
        {"beam_size": 1},
        {},  # the shipped settings: beam 3, no repeated bigram
        {"beam_size": 4, "length_penalty": 1.0, "no_repeat_ngram": 0, "min_length": 3},
        {"num_captions": 3},
    ],
)
def test_the_fast_path_captions_as_the_keras_path(shipped_here, tiny_data, settings):
    from captioner.run import load_run
    from captioner.tasks.caption import caption_files

    captioner, _ = _lite(shipped_here)
    run = load_run("pretrained")
    assert run.shipped and run.path == shipped_here / "caption"
    decode = dataclasses.replace(run.config.decode, **settings)
    fast = captioner.caption_files(_images(tiny_data), decode)
    slow = caption_files(run, _images(tiny_data), decode)
    for a, b in zip(fast, slow):
        assert a["caption"] == b["caption"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-3)
        if "candidates" in b:
            assert [c["caption"] for c in a["candidates"]] == [c["caption"] for c in b["candidates"]]


def test_the_fast_path_answers_as_the_keras_path(shipped_here, tiny_data):
    from captioner.run import load_run
    from captioner.tasks.vqa import ask

    _, answerer = _lite(shipped_here)
    run = load_run("pretrained", task="vqa")
    questions = ["what shape is it ?", "what color is the circle ?", "is there a square ?", "zebra ?"]
    for image in _images(tiny_data, 3):
        fast, slow = answerer.ask(image, questions, top=3), ask(run, image, questions, top=3)
        for a, b in zip(fast["answers"], slow["answers"]):
            assert [t["probability"] for t in a["top"]] == pytest.approx([t["probability"] for t in b["top"]], abs=1e-4)
            assert a.get("warning") == b.get("warning")


def test_no_run_means_the_shipped_model_and_no_tensorflow(shipped_here, tiny_data, tmp_path):
    """`captioner caption IMAGE` and `ask` with no --run: the fast path, which imports neither TensorFlow nor Keras."""
    image = _images(tiny_data, 1)[0]
    picture = tmp_path / "maps.png"
    script = (
        "import sys, json; from captioner.cli import main; "
        f"codes = [main(['caption', {image!r}, '--attention', {str(picture)!r}]), main(['ask', {image!r}, 'what shape "
        f"is it ?'])]; "
        "print(json.dumps([codes, sorted(m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules)]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env={**os.environ}, timeout=120
    )
    assert done.returncode == 0, done.stderr
    codes, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert codes == [0, 0] and imported == []
    assert picture.stat().st_size > 0
    assert "XNNPACK" not in done.stderr and "INFO" not in done.stderr and "Traceback" not in done.stderr


def test_engine_keras_and_sampling_take_the_keras_path(shipped_here, tiny_data, capsys):
    image = _images(tiny_data, 1)[0]
    assert main(["caption", "--engine", "keras", image]) == 0
    keras_caption = capsys.readouterr().out.strip()
    assert main(["caption", image]) == 0
    assert capsys.readouterr().out.strip() == keras_caption
    assert main(["caption", "--sampler", "sampling", "--seed", "3", image]) == 0  # auto: sampling is the Keras path's
    assert capsys.readouterr().out.strip()
    assert main(["caption", "--engine", "litert", "--sampler", "sampling", image]) == 2
    assert "needs --engine keras" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--min-length", "-1"], "--min-length must be 0 or more"),
        (["--no-repeat-ngram", "1"], "--no-repeat-ngram 0 (off) or 2"),
        (["--beam-size", "2", "--num-captions", "3"], "more than the beam holds"),
        (["--sampler", "greedy", "--num-captions", "2"], "greedy decoding gives one caption"),
        (["--hard-context", "argmax"], "hard-attention runs"),
    ],
)
def test_bad_decoding_flags_on_the_fast_path_are_one_line(shipped_here, tiny_data, capsys, flags, expected):
    assert main(["caption", "--engine", "litert", *flags, _images(tiny_data, 1)[0]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err


def test_evaluate_and_export_take_the_shipped_models(shipped_here, tiny_data, tmp_path, capsys):
    before = {p: p.stat().st_mtime_ns for p in shipped_here.rglob("*")}
    assert main(["evaluate", "--run", "pretrained", "--data-dir", str(tiny_data), "--json"]) == 0
    assert "bleu4" in capsys.readouterr().out
    assert main(["evaluate", "--run", "pretrained-vqa", "--data-dir", str(tiny_data), "--json"]) == 0
    assert '"accuracy"' in capsys.readouterr().out
    assert {
        p: p.stat().st_mtime_ns for p in shipped_here.rglob("*")
    } == before  # nothing written into the shipped folder
    assert main(["export", "--run", "pretrained", "--format", "tflite", "--out", str(tmp_path / "lite")]) == 0
    assert (tmp_path / "lite" / "step.tflite").is_file()


@pytest.mark.parametrize("damage", ["missing_weights", "flipped_byte", "missing_manifest", "garbled_manifest"])
@pytest.mark.parametrize("engine", ["litert", "keras"])
def test_a_damaged_shipped_file_is_one_line_that_says_how_to_restore_it(
    packed, tiny_data, tmp_path, monkeypatch, capsys, damage, engine
):
    broken = tmp_path / "pretrained"
    shutil.copytree(packed, broken)
    if damage == "missing_weights":
        (broken / "caption" / "weights.npz").unlink()
    elif damage == "flipped_byte":
        data = bytearray((broken / pretrained.ENCODER_FILE).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (broken / pretrained.ENCODER_FILE).write_bytes(bytes(data))
    elif damage == "missing_manifest":
        (broken / pretrained.MANIFEST).unlink()
    else:
        (broken / pretrained.MANIFEST).write_text("{not json")
    monkeypatch.setenv(pretrained.FOLDER_ENV, str(broken))
    assert main(["caption", "--engine", engine, _images(tiny_data, 1)[0]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "make pretrained" in err and "reinstall" in err


def test_export_refuses_runs_that_do_not_share_their_encoder(attention_run, vqa_run, tmp_path):
    from captioner.run import load_run
    from captioner.serving.export import export_pretrained

    with pytest.raises(CaptionerError, match="encoder"):
        export_pretrained(load_run(attention_run), load_run(vqa_run, task="vqa"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_folder_named_pretrained_is_a_run_not_the_shipped_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert pretrained.is_pretrained(None) and pretrained.is_pretrained("pretrained")
    (tmp_path / "pretrained").mkdir()
    assert not pretrained.is_pretrained("pretrained")


# The models in the package itself.
shipped = pytest.mark.skipif(not SHIPPED, reason="captioner/pretrained holds no models (make pretrained)")


@shipped
@pytest.mark.backends
def test_the_shipped_caption_model_names_the_photo_s_subject_on_both_paths(monkeypatch):
    from captioner.run import load_run
    from captioner.tasks.caption import caption_files

    monkeypatch.delenv(pretrained.FOLDER_ENV, raising=False)
    run = load_run(None)
    keras_caption = caption_files(run, [str(PHOTO)], run.config.decode)[0]["caption"]
    captioner, _ = _lite(pretrained.FOLDER)
    fast_caption = captioner.caption_files([str(PHOTO)], captioner.config.decode)[0]["caption"]
    assert fast_caption == keras_caption
    assert {"man", "woman", "person"} & set(fast_caption.split()), fast_caption


@shipped
@pytest.mark.backends
def test_the_shipped_vqa_model_answers_a_presence_question(monkeypatch):
    from captioner.run import load_run
    from captioner.tasks.vqa import ask

    monkeypatch.delenv(pretrained.FOLDER_ENV, raising=False)
    _, answerer = _lite(pretrained.FOLDER)
    questions = ["is there a person in the picture ?", "is there a giraffe in the picture ?"]
    fast = [a["answer"] for a in answerer.ask(str(PHOTO), questions)["answers"]]
    slow = [a["answer"] for a in ask(load_run(None, task="vqa"), str(PHOTO), questions)["answers"]]
    assert fast == slow == ["yes", "no"]


@shipped
@pytest.mark.slow
def test_pip_install_then_caption_with_no_run(tmp_path):
    """A fresh venv, `pip install .` (from a copy of the repository: no editable link), then `captioner caption` and
    `captioner ask` with no --run, from the installed package."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    source = tmp_path / "src"

    def skipped(folder: str, names: list[str]) -> set[str]:  # the clone's own venv, runs and data, not captioner/data
        top = {".venv", ".git", "runs", "data", "build"} if Path(folder) == REPO else set()
        return {n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")}

    shutil.copytree(REPO, source, ignore=skipped)
    subprocess.run([*pip, str(source)], check=True, timeout=900)
    env = {k: v for k, v in os.environ.items() if k != pretrained.FOLDER_ENV}
    captioned = subprocess.run(
        [str(venv / "bin" / "captioner"), "caption", str(PHOTO)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert captioned.returncode == 0, captioned.stderr
    assert {"man", "woman", "person"} & set(captioned.stdout.split())
    answered = subprocess.run(
        [str(venv / "bin" / "captioner"), "ask", str(PHOTO), "is there a giraffe in the picture ?"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert answered.returncode == 0 and answered.stdout.splitlines()[0] == "no", answered.stderr
