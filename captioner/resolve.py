"""One resolve-and-validate step for training: what a command asked for (a `RunConfig`, the request) and the
machine it runs on become a complete, checked `RunConfig` before anything is read or written.

`check` holds every value check of a training request, one line each (task, objective and SCST's own settings,
monitor, decoder, encoder, fine-tuned blocks, precisions, decoding, the VQA head, what several devices allow).
`resolve` checks, then writes out every "auto" as what the builders make of it, with one reason per choice in
`RunConfig.reasons` (config.json and the training log say them). `source_run` loads and checks `--init-from`'s run.
`train` calls these first; below it, modules read the resolved config, never the request.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from captioner import scst
from captioner.config import (
    DERIVED,
    INIT_FROM_MODEL_CHANGES,
    INIT_FROM_VQA_CHANGES,
    PRECISIONS,
    RunConfig,
    flatten,
    with_settings,
)
from captioner.errors import CaptionerError
from captioner.generation.decoding import sampler_name
from captioner.models.decoder import ATTENTIONS, CELLS, MAX_LAYERS
from captioner.models.encoder import ENCODERS
from captioner.models.networks import encoder_is_trainable, training_work
from captioner.models.vqa_head import FUSIONS, IMAGE_NORMS
from captioner.precision import choose_auto, hardware
from captioner.run import CONFIG_FILE, METRICS_FILE, Run, load_run, read_json, stored_task
from captioner.tasks import TASKS

OBJECTIVES = ("xe", "scst")
DECODERS = ("show-tell", "attention")
# train.monitor: what picks the best epoch, and which way is better
MONITORS = {"val_loss": "min", "val_accuracy": "max", "val_cider": "max"}


@dataclass(frozen=True)
class Machine:
    """What of the machine a training's settings depend on."""

    backend: str = "tensorflow"  # Keras's backend
    replicas: int = 1  # devices the global batch is split over
    hardware: str = ""  # `precision.hardware()`'s kind; "" asks it

    @classmethod
    def of(cls, parallel) -> Machine:
        """The machine a started `distribute.Parallel` runs on."""
        return cls(parallel.backend, parallel.replicas, hardware())


def monitor_mode(monitor: str, task: str, objective: str = "xe") -> str:
    """ "min" or "max" for a `train.monitor` the run logs (caption runs log no accuracy; only SCST runs log CIDEr, and
    they log no validation loss)."""
    if monitor not in MONITORS:
        raise CaptionerError(f"unknown train.monitor '{monitor}'; use one of {', '.join(MONITORS)}")
    if monitor == "val_accuracy" and task != "vqa":
        raise CaptionerError("train.monitor=val_accuracy is for VQA runs; caption runs monitor val_loss")
    if (monitor == "val_cider") != (objective == "scst"):
        raise CaptionerError("train.monitor=val_cider goes with --objective scst, which monitors nothing else")
    return MONITORS[monitor]


def check(config: RunConfig, machine: Machine = Machine()) -> None:
    """Every value of a training request that can be wrong, checked before anything is read or written."""
    train, model = config.train, config.model
    if config.task not in TASKS:
        raise CaptionerError(f"unknown task '{config.task}'; use {' or '.join(TASKS)}")
    if train.objective not in OBJECTIVES:
        raise CaptionerError(f"unknown --objective '{train.objective}'; use xe or scst")
    if train.objective != "xe" and config.task != "caption":
        raise CaptionerError(
            f"--objective {train.objective} is for captioning; a {config.task} run trains with cross-entropy (xe)"
        )
    if train.objective == "scst":
        scst.check(config)
    monitor_mode(train.monitor, config.task, train.objective)
    for name, value in (
        ("model.precision", model.precision),
        ("data.feature_precision", config.data.feature_precision),
    ):
        if value != "auto" and value not in PRECISIONS:
            raise CaptionerError(f"unknown {name} '{value}'; choose auto or one of: {', '.join(PRECISIONS)}")
    if model.encoder not in ENCODERS:
        raise CaptionerError(f"unknown encoder '{model.encoder}'; choose one of: {', '.join(ENCODERS)}")
    if model.fine_tune_blocks < 0:
        raise CaptionerError(f"--fine-tune-blocks must be 0 or more (got {model.fine_tune_blocks})")
    if model.fine_tune_blocks and model.encoder == "small_cnn":
        raise CaptionerError("--fine-tune-blocks is for pretrained backbones; the small CNN trains whole")
    if model.fine_tune_blocks and model.encoder_trainable:
        raise CaptionerError(
            "--fine-tune-blocks trains the top blocks of a frozen backbone; do not also make the whole encoder "
            "trainable"
        )
    if config.task == "caption":
        if model.decoder not in DECODERS:
            raise CaptionerError(f"unknown --decoder '{model.decoder}'; choose show-tell or attention")
        if model.cell not in CELLS:
            raise CaptionerError(f"unknown cell '{model.cell}'; choose lstm or gru")
        if not 1 <= model.num_layers <= MAX_LAYERS:
            raise CaptionerError(f"num_layers must be between 1 and {MAX_LAYERS} (got {model.num_layers})")
        if model.attention not in ATTENTIONS:
            raise CaptionerError(f"unknown attention '{model.attention}'; choose soft or hard")
        if model.state_init not in (None, "pooled", "grid_mean"):
            raise CaptionerError(f"unknown model.state_init '{model.state_init}'; choose pooled or grid_mean")
        sampler_name(config.decode)
    else:
        vqa = config.vqa
        if vqa.fusion not in FUSIONS:
            raise CaptionerError(f"unknown --fusion '{vqa.fusion}'; choose one of: {', '.join(FUSIONS)}")
        if vqa.image_norm not in IMAGE_NORMS:
            raise CaptionerError(f"unknown vqa.image_norm '{vqa.image_norm}'; choose one of: {', '.join(IMAGE_NORMS)}")
        if not (vqa.use_image or vqa.use_question):
            raise CaptionerError("--question-only and --image-only leave the model nothing to read; pass one of them")
    if machine.replicas > 1 and train.objective == "scst":
        raise CaptionerError(
            "--objective scst trains on one device (its sampling loop is not data-parallel); drop --devices and "
            "the KERAS_DISTRIBUTION_* settings"
        )
    if (
        machine.replicas > 1
        and machine.backend == "tensorflow"
        and config.task == "caption"
        and model.attention == "hard"
    ):
        raise CaptionerError(
            "--attention hard trains on several devices on the JAX backend only (under TensorFlow's MirroredStrategy "
            "its sampled grid positions and reward baseline would be per device); set KERAS_BACKEND=jax or drop "
            "--devices"
        )


def resolve(request: RunConfig, machine: Machine = Machine()) -> RunConfig:
    """`request` checked (`check`), with every "auto" written out as what is built, and why (`reasons`):
    `model.encoder_trainable`, `model.state_init`, `model.encoder_pooling`, `model.precision`,
    `data.feature_precision`. An encoder taken from another run (`vqa.encoder_from`) keeps that run's pooling."""
    check(request, machine)
    model, task = request.model, request.task
    reasons: dict[str, str] = {}
    settings: dict[str, object] = {}
    attention = model.decoder == "attention" if task == "caption" else request.vqa.attention
    taken = task == "vqa" and bool(request.vqa.encoder_from)
    if model.encoder_trainable is None:
        settings["model.encoder_trainable"] = False if taken else encoder_is_trainable(model)
        reasons["model.encoder_trainable"] = (
            "an encoder taken from a caption run stays frozen"
            if taken
            else "the small CNN trains with the decoder"
            if model.encoder == "small_cnn"
            else "a pretrained backbone stays frozen (its features cached)"
        )
    state_init = model.state_init
    if state_init is None:
        state_init = "grid_mean" if attention and task == "caption" else "pooled"
        settings["model.state_init"] = state_init
        reasons["model.state_init"] = (
            "an attention decoder starts from the grid's mean (Xu et al.)"
            if state_init == "grid_mean"
            else "the decoder starts from the pooled vector (Vinyals et al.)"
        )
    if model.encoder_pooling is None and not taken:
        grid_only = state_init == "grid_mean" if task == "caption" else attention  # nothing reads the pooled vector
        pooling = "avg" if grid_only or model.encoder != "small_cnn" else "flatten"
        settings["model.encoder_pooling"] = pooling
        reasons["model.encoder_pooling"] = (
            "nothing reads a pooled vector but the grid's mean"
            if grid_only
            else "a backbone's grid is averaged"
            if pooling == "avg"
            else "the small CNN's grid is flattened and projected (it keeps where things are)"
        )
    config = with_settings(request, settings)
    kind = machine.hardware or None
    if config.model.precision == "auto":
        choice = choose_auto(training_work(config), kind)
        precision, reasons["model.precision"] = choice.precision, choice.reason
    else:
        precision = config.model.precision
    feature_precision = config.data.feature_precision
    if feature_precision == "auto":  # on the machine's kind, as the model's precision above
        feature = choose_auto("features", kind)
        feature_precision, reasons["data.feature_precision"] = feature.precision, feature.reason
    config = with_settings(
        config,
        {
            "model.precision": precision,
            "model.precision_reason": reasons.get("model.precision", ""),
            "data.feature_precision": feature_precision,
        },
    )
    config.reasons = reasons
    return config


def source_run(config: RunConfig, run_dir: Path) -> Run:
    """`--init-from`'s run, loaded and checked against `config`: a finished run of the same task and dataset whose
    fixed settings this run keeps (for captioning every model setting but `INIT_FROM_MODEL_CHANGES`, for VQA every
    head setting but `INIT_FROM_VQA_CHANGES`)."""
    path = Path(config.train.init_from)
    if path.resolve() == Path(run_dir).resolve():
        raise CaptionerError(
            f"--init-from {path} is the run being trained; the source is only read: choose a new --run "
            f"(to train {path} further, repeat its command with a larger --epochs)"
        )
    if (path / CONFIG_FILE).exists() and stored_task(path) != config.task:
        raise CaptionerError(
            f"--init-from {path} is a {stored_task(path)} run; a {config.task} run starts from a {config.task} run"
            + (" (a VQA run takes a caption run's encoder with --encoder-from)" if config.task == "vqa" else "")
        )
    try:
        source = load_run(path, task=config.task)
    except CaptionerError as exc:
        raise CaptionerError(f"--init-from: {exc}") from None
    status = read_json(path / METRICS_FILE, {}).get("status")
    if status != "finished":
        raise CaptionerError(
            f"--init-from {path} has not finished training (status '{status}'); finish it by repeating its train "
            f"command, or start from a finished run"
        )
    before, now = flatten(source.config), flatten(config)
    if before["data.dataset"] != now["data.dataset"]:
        raise CaptionerError(
            f"--init-from {path} was trained on the {before['data.dataset']} dataset's vocabulary, not "
            f"{now['data.dataset']}'s; "
            f"start from a run of this dataset, or train without --init-from"
        )
    fixed = [
        key
        for key in before
        if (key.startswith("model.") and key not in INIT_FROM_MODEL_CHANGES)
        or key in DERIVED
        or (config.task == "vqa" and key.startswith("vqa.") and key not in INIT_FROM_VQA_CHANGES)
    ]
    changed = [f"{key} ({before[key]} -> {now.get(key)})" for key in fixed if before[key] != now.get(key)]
    if changed:
        raise CaptionerError(
            f"--init-from {path} fixes {', '.join(changed[:3])}; drop those settings "
            f"(a run started from another may change only {', '.join(INIT_FROM_MODEL_CHANGES[:3])} and how it trains)"
        )
    return source
