"""Typed configuration: dataclasses for data, model, training and decoding, named presets,
JSON round-trip and typed overrides (`--set train.epochs=3`).

Nothing here imports TensorFlow; every other module reads these objects.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # Keras dtype policies a run may use (captioner.precision)
AUTO_PRECISION_ENV = "CAPTIONER_AUTO_PRECISION"  # forces what "auto" precision becomes (captioner.precision)
FORMAT_VERSION = 1  # bump when the run-directory layout or config schema changes incompatibly


@dataclass
class DataConfig:
    """Where the captions come from and how text and images are shaped."""

    dataset: str = "shapes"  # name of a dataset loader in captioner.data
    data_dir: str = "data/shapes"  # folder holding the annotation files and images
    image_size: int = 64  # images are resized to image_size x image_size (pretrained encoders override it)
    max_caption_length: int = 24  # words kept per caption, before <start>/<end> are added
    min_word_count: int = 1  # words seen fewer times in the training captions map to <unk>
    captions_per_image: int = 5  # references decoded per image per step (padded/truncated to this)
    cache_images: bool = True  # keep decoded images in memory after the first epoch (small datasets)
    # pad captions to this percentile of training caption lengths (at most max_caption_length)
    max_length_percentile: float = 100.0
    feature_cache_dir: str = ""  # frozen backbones: where grid features are cached ("" = DATA_DIR/features)
    # frozen backbones: precision of the CNN that fills the cache (auto: as `captioner features`)
    feature_precision: str = "auto"
    # further datasets trained on with the first, each "DATASET=DIR" (one vocabulary)
    more_sources: list[str] = field(default_factory=list)
    # each source's share of the training records, first source first ([]: all records as they are)
    source_weights: list[float] = field(default_factory=list)


@dataclass
class ModelConfig:
    """Architecture hyper-parameters of the encoder and decoder."""

    decoder: str = "show-tell"  # "show-tell" (Vinyals et al. 2015) or "attention" (Xu et al. 2015)
    # decoder "attention": "soft" or "hard" (one sampled grid position per word, REINFORCE; Xu et al. 2015)
    attention: str = "soft"
    hard_entropy_weight: float = 0.002  # hard attention: weight of the entropy bonus on the attention weights
    # hard attention: weight of the REINFORCE term (lambda_r of Xu et al.; 1.0 let it swamp the XE on Flickr8k)
    hard_reinforce_weight: float = 0.1
    # hard attention: share of captions trained on the expected context (Xu et al.: 0.5)
    hard_expected_share: float = 0.5
    cell: str = "lstm"  # the decoder's recurrent cell: "lstm" or "gru"
    num_layers: int = 1  # stacked recurrent layers, 1-4 (dropout_rate between them; the image initialises each)
    encoder: str = "small_cnn"  # "small_cnn" or a keras.applications backbone name, e.g. "mobilenet_v2"
    encoder_weights: str | None = None  # None, "imagenet" or a path to a .weights.h5 file (backbones only)
    encoder_filters: list[int] = field(default_factory=lambda: [32, 64, 128, 128])  # small_cnn channels per stage
    # train the CNN with the decoder; None: small_cnn yes, backbones no (frozen, features cached)
    encoder_trainable: bool | None = None
    fine_tune_blocks: int = 0  # backbones: train the top N blocks on cached activations below them (the rest frozen)
    encoder_norm: str = "none"  # small_cnn normalisation: "none", "group" or "batch" (docs/models.md: the collapse)
    # small_cnn pixels scaled to [-1, 1] ("centered") or [0, 1] ("unit", runs before 2026-11-30)
    encoder_input: str = "centered"
    feature_dim: int = 256  # width of the pooled image vector when encoder_pooling is "flatten"
    encoder_pooling: str | None = None  # "flatten" or "avg"; None: flatten for small_cnn, avg for backbones
    embedding_dim: int = 128  # word-embedding width
    hidden_dim: int = 256  # LSTM units
    dropout_rate: float = 0.2  # dropout on the LSTM output before the vocabulary projection
    attention_dim: int = 128  # width of the additive attention (decoder "attention")
    attention_regularization: float = 1.0  # lambda of the doubly stochastic attention penalty
    # the recurrent state initialised from "pooled" or "grid_mean" (the grid's mean); None: grid_mean with attention
    state_init: str | None = None
    # float32, mixed_bfloat16 or mixed_float16; auto: what measured faster at equal quality (captioner.precision)
    precision: str = "auto"
    precision_reason: str = ""  # why "auto" became `precision` (written when a run starts; "" when it was asked for)


@dataclass
class TrainConfig:
    """Optimisation settings."""

    epochs: int = 20  # upper bound; early stopping may end sooner
    batch_size: int = 32  # images per step (each with captions_per_image captions)
    learning_rate: float = 2e-3  # Adam step size
    clip_norm: float = 5.0  # global gradient-norm clipping
    patience: int = 3  # epochs without validation-loss improvement before stopping
    seed: int = 0  # seeds Python, NumPy and TensorFlow
    train_split: str = "train"  # split trained on
    val_split: str = "val"  # split used for validation loss and best-checkpoint selection
    max_train_images: int | None = None  # use only the first N training images (quick runs, tests)
    max_val_images: int | None = None  # likewise for validation
    backup_every_steps: int = 100  # mid-epoch backup of weights and optimizer state, for resuming after a kill
    lr_reduce_factor: float = 1.0  # multiply the learning rate by this when validation loss stalls (1.0: never)
    lr_reduce_patience: int = 1  # epochs without validation-loss improvement before the learning rate is reduced
    # what picks the best epoch, stops early and reduces the rate: "val_loss", "val_accuracy" (VQA), "val_cider" (SCST)
    monitor: str = "val_loss"
    init_from: str | None = None  # start from this finished caption run's weights, vocabulary and model settings
    # "xe": cross-entropy with teacher forcing; "scst": self-critical training on CIDEr-D (needs init_from)
    objective: str = "xe"
    scst_samples: int = 5  # scst: captions sampled per image per step
    # scst: the reward subtracted: the greedy caption's CIDEr-D ("greedy") or the other samples' mean ("mean")
    scst_baseline: str = "greedy"


@dataclass
class DecodeConfig:
    """How captions are generated at inference time."""

    max_length: int = 26  # generated tokens at most, <end> included
    beam_size: int = 3  # default beam width of caption and evaluate; 1 = greedy
    # beams (and samples) are ranked by log-probability / length**length_penalty (0: raw log-probability)
    length_penalty: float = 1.0
    # "greedy", "beam", "sampling" (captioner.generation.samplers); "auto": beam if beam_size > 1, else greedy
    sampler: str = "auto"
    temperature: float = 1.0  # sampling: logits divided by it (0: the most likely word)
    top_k: int | None = None  # sampling: among the k most likely words only
    top_p: float | None = None  # sampling: among the smallest set of most likely words whose probability reaches p
    num_captions: int = 1  # captions returned per image: the best beams, or samples (best first)
    seed: int = 0  # sampling: the same seed gives the same captions, on every backend
    no_repeat_ngram: int = 0  # never repeat an n-gram of this length within a caption (3: no repeated trigram; 0: off)
    min_length: int = 0  # <end> only after this many words
    # hard-attention runs: read the "expectation" (soft context) or the "argmax" grid position
    hard_context: str = "expectation"


@dataclass
class VQAConfig:
    """The VQA head (Antol et al. 2015, "LSTM Q + I"): question LSTM, fused image features, answer classifier."""

    num_answers: int = 1000  # classes: the most frequent training answers; the rest are <other>, never predicted
    answer_type: str = ""  # keep only questions of this answer type: "yes/no", "number" or "other" ("": all)
    max_question_length: int = 20  # question words kept
    questions_per_image: int = 16  # questions decoded against one image encoding per step (more: split in groups)
    question_embedding_dim: int = 128  # question word-embedding width
    question_hidden_dim: int = 256  # question LSTM units
    fusion: str = "multiply"  # "multiply" (element-wise product, as Antol et al.) or "concat"
    fusion_dim: int = 256  # width both inputs are projected to before fusion
    mlp_dim: int = 256  # hidden layer of the classifier
    dropout_rate: float = 0.3  # dropout before and after the classifier's hidden layer
    # image features before fusion: "batch" (BatchNorm), "layer" (LayerNorm) or "l2" (Antol et al.)
    image_norm: str = "batch"
    # a ReLU layer of this width on the normalised image vector before its projection (0: none)
    image_hidden_dim: int = 0
    attention: bool = False  # the question attends over the image grid (one stacked-attention hop)
    attention_dim: int = 128  # width of that attention
    use_image: bool = True  # False: the image takes no part, a question-only (blind, "LSTM Q") model, for ablations
    use_question: bool = True  # False: the question takes no part, an image-only ("I") model, for ablations
    # caption run whose trained ImageEncoder starts this model (frozen unless model.encoder_trainable)
    encoder_from: str | None = None


@dataclass
class RunConfig:
    """Everything a run directory needs to rebuild and describe itself."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    vqa: VQAConfig = field(default_factory=VQAConfig)
    preset: str = "shapes"  # the preset these values started from
    task: str = "caption"  # what the run's model does: "caption" or "vqa"
    format_version: int = FORMAT_VERSION  # layout version of the run directory
    # what each "auto" setting became and why ({"model.precision": "auto -> float32 for ..."}; `resolve.resolve`)
    reasons: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Rebuild from `to_dict` output (old names mapped: `upgraded`); unknown keys are an error, missing keys take
        defaults."""
        values = upgraded(values)
        sections = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(values) - set(sections)
        if unknown:
            raise ValueError(f"unknown config sections: {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        for name, value in values.items():
            section_type = _SECTION_TYPES.get(name)
            if section_type is None:
                kwargs[name] = value
                continue
            known = {f.name for f in dataclasses.fields(section_type)}
            bad = set(value) - known
            if bad:
                raise ValueError(f"unknown keys in config section '{name}': {sorted(bad)}")
            kwargs[name] = section_type(**value)
        return cls(**kwargs)


# Settings renamed since runs were first written (one name, one meaning): old "section.field" -> new. Old config.json
# and request.json files load (`upgraded`), and `--set` takes the old name too (`apply_overrides`).
RENAMED = {"model.init_from": "model.state_init"}


def upgraded(values: dict[str, Any]) -> dict[str, Any]:
    """A `to_dict` payload with old setting names mapped to today's: `RENAMED`, and `vqa.fine_tune_encoder` (until
    2026-12-06 the VQA meaning of --fine-tune-encoder) as `model.encoder_trainable` where an encoder was taken from a
    caption run, the one case it acted on."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in values.items()}
    for old, new in RENAMED.items():
        (section, name), (new_section, new_name) = old.split("."), new.split(".")
        if isinstance(values.get(section), dict) and name in values[section]:
            value = values[section].pop(name)
            values.setdefault(new_section, {}).setdefault(new_name, value)
    vqa, model = values.get("vqa"), values.get("model")
    if isinstance(vqa, dict) and "fine_tune_encoder" in vqa:
        fine_tune = vqa.pop("fine_tune_encoder")
        if vqa.get("encoder_from") and isinstance(model, dict):
            model["encoder_trainable"] = bool(fine_tune)
    return values


def upgraded_flat(flat: dict[str, Any]) -> dict[str, Any]:
    """`upgraded` for a `flatten`ed payload ({"section.field": value}, as request.json holds)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        section, dot, name = key.partition(".")
        if dot:
            nested.setdefault(section, {})[name] = value
        else:
            nested[key] = value
    out: dict[str, Any] = {}
    for section, value in upgraded(nested).items():
        if isinstance(value, dict):
            out.update({f"{section}.{name}": v for name, v in value.items()})
        else:
            out[section] = value
    return out


_SECTION_TYPES = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "decode": DecodeConfig,
    "vqa": VQAConfig,
}


def preset(name: str) -> RunConfig:
    """Named starting points.

    - `shapes`: the built-in dataset, sized so `make demo` trains in a few minutes on 2 CPU cores.
    - `tiny`: a few-second model for tests and the notebook (vocab ~40, 32x32 images).
    - `flickr8k`: Show-Attend-Tell on Flickr8k with a frozen ImageNet MobileNetV2 and cached features.
    - `shapes-vqa`, `easy-vqa`: the VQA head on the built-in shapes questions or on the easy-VQA package's
      dataset (64x64 images, 13 answers).
    - `vqa-coco`: the VQA head on yes/no questions about photographs (vqa-lines files, e.g. the VQA v2 yes/no subset
      on COCO photos) with a frozen ImageNet MobileNetV2 and cached features.
    """
    if name == "shapes":
        # 12 epochs: with a He-initialised CNN (convolutions and projection) and centered pixels the demo's
        # Show-and-Tell leaves its plateau in the first epochs in all 6 seed x precision runs measured (test BLEU-4
        # 0.67-0.71). BENCHMARKS.md, "The demo's plateau".
        return RunConfig(train=TrainConfig(epochs=12), preset="shapes")
    if name == "tiny":
        return RunConfig(
            data=DataConfig(image_size=32, cache_images=True),
            # float32 on every machine: tests compare its numbers tightly (eager vs traced, backend vs backend,
            # export vs caption); mixed precision has tests of its own (tests/test_precision.py).
            model=ModelConfig(
                encoder_filters=[8, 16, 16],
                feature_dim=32,
                embedding_dim=16,
                hidden_dim=32,
                dropout_rate=0.0,
                precision="float32",
            ),
            train=TrainConfig(epochs=2, batch_size=16, learning_rate=1e-2, patience=5),
            vqa=VQAConfig(
                question_embedding_dim=16,
                question_hidden_dim=32,
                fusion_dim=32,
                mlp_dim=32,
                dropout_rate=0.0,
                attention_dim=16,
            ),
            preset="tiny",
        )
    if name == "flickr8k":
        # Show-Attend-Tell on Flickr8k with a frozen ImageNet MobileNetV2 (features cached once per image);
        # sizes follow sgrvinod's tutorial, scaled down for a CPU.
        return RunConfig(
            data=DataConfig(
                dataset="flickr8k",
                data_dir="data/flickr8k",
                min_word_count=5,
                max_length_percentile=95.0,
                cache_images=False,
            ),
            # precision "auto": the decoder on cached features is the work mixed precision may speed up; the features
            # are computed at data.feature_precision, as `captioner features` computes them (BENCHMARKS.md, precision).
            model=ModelConfig(
                decoder="attention",
                encoder="mobilenet_v2",
                encoder_weights="imagenet",
                embedding_dim=256,
                hidden_dim=512,
                attention_dim=256,
                dropout_rate=0.5,
            ),
            # 1e-3 halved whenever validation loss stalls: 188 steps of 160 captions an epoch, so sgrvinod's 4e-4
            # (for batches of 32 captions) learns too slowly for a CPU budget (BENCHMARKS.md, Flickr8k tries).
            train=TrainConfig(
                epochs=20, batch_size=32, learning_rate=1e-3, patience=3, lr_reduce_factor=0.5, lr_reduce_patience=1
            ),
            # Length penalty 0.5 chosen on the dev split (BLEU-4 0.195 vs 0.189 at 1.0; BENCHMARKS.md).
            decode=DecodeConfig(max_length=30, beam_size=3, length_penalty=0.5),
            preset="flickr8k",
        )
    if name in ("easy-vqa", "shapes-vqa"):
        # BatchNorm in the CNN: without it the image features of a CNN trained from scratch collapse to one
        # vector for every image and the model answers from the question alone (docs/vqa.md).
        return RunConfig(
            data=DataConfig(dataset="easy-vqa", data_dir="") if name == "easy-vqa" else DataConfig(),
            model=ModelConfig(encoder_norm="batch", encoder_pooling="avg"),
            # Small image batches: each image carries ~10 questions, so 8 images make ~80 questions a step.
            train=TrainConfig(epochs=30, batch_size=8, learning_rate=1e-3, patience=5),
            vqa=VQAConfig(dropout_rate=0.1),
            task="vqa",
            preset=name,
        )
    if name == "vqa-coco":
        # VQA v2 yes/no questions on COCO photos with a frozen ImageNet MobileNetV2 (features cached once per photo):
        # the grid mean, LayerNorm, a ReLU layer, then fused with the question LSTM by a product of tanh projections;
        # the best epoch by dev accuracy (docs/vqa.md, "VQA on photographs"; BENCHMARKS.md, the tries).
        return RunConfig(
            data=DataConfig(dataset="vqa-lines", data_dir="data/vqa_coco_yesno", cache_images=False),
            model=ModelConfig(encoder="mobilenet_v2", encoder_weights="imagenet", encoder_pooling="avg"),
            train=TrainConfig(epochs=30, batch_size=64, learning_rate=5e-4, patience=5, monitor="val_accuracy"),
            # One question per row: a photo here has 1.17 questions on average, so groups of 16 were 93% padding (an
            # epoch 116 s instead of ~10); with cached features a photo's grid costs nothing to repeat.
            vqa=VQAConfig(
                answer_type="yes/no",
                questions_per_image=1,
                question_embedding_dim=256,
                question_hidden_dim=512,
                fusion_dim=512,
                mlp_dim=256,
                dropout_rate=0.3,
                image_norm="layer",
                image_hidden_dim=512,
            ),
            task="vqa",
            preset=name,
        )
    raise ValueError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")


PRESETS = ("shapes", "tiny", "flickr8k", "shapes-vqa", "easy-vqa", "vqa-coco")

# Settings a resumed run may take from the new command: how long and how patiently it trains, how often it backs
# up, where cached features live, and how it captions afterwards. Any other change makes a different model.
RESUMABLE = ("train.epochs", "train.patience", "train.backup_every_steps", "data.feature_cache_dir")
RESUMABLE_SECTIONS = ("decode",)
# What a run started with --init-from takes from the command rather than from its source run: how it trains, and the
# model settings that change no weight (dropout, the attention penalty, precision) or only which weights train
# (fine_tune_blocks).
INIT_FROM_MODEL_CHANGES = (
    "model.fine_tune_blocks",
    "model.dropout_rate",
    "model.attention_regularization",
    "model.precision",
    "model.precision_reason",
    "model.hard_entropy_weight",
    "model.hard_expected_share",
    "model.hard_reinforce_weight",
)
# VQA head settings that change no weight: what `train-vqa --init-from` may change besides those above.
INIT_FROM_VQA_CHANGES = ("vqa.dropout_rate", "vqa.questions_per_image", "model.encoder_trainable")
# Filled in from the data when a run starts (the command asks for a cap, the run stores what it used).
DERIVED = ("data.image_size", "data.max_caption_length", "vqa.max_question_length")


def started_from(source: RunConfig, init_from: str, objective: str = "xe") -> RunConfig:
    """The settings of a run that starts from `source` (`--init-from`): the source's, with its training settings
    monitored by validation loss for "xe" (an SCST source monitored CIDEr); "scst" takes its own defaults on top
    (`captioner.scst.started_from`). Command-line flags go on top."""
    config = with_settings(source, {"train.init_from": init_from, "train.objective": objective})
    if objective == "xe" and source.train.monitor == "val_cider":
        return with_settings(config, {"train.monitor": "val_loss"})
    return config


def flatten(config: RunConfig) -> dict[str, Any]:
    """{"section.field": value} for every setting ("preset", "task" and "format_version" as themselves)."""
    flat: dict[str, Any] = {}
    for key, value in config.to_dict().items():
        if key == "reasons":  # why settings are what they are: not a setting
            continue
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": item for name, item in value.items()})
        else:
            flat[key] = value
    return flat


def resume_changes(before: dict[str, Any], now: dict[str, Any]) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """The settings that differ between the command that started a run and this one, as {key: (before, now)}:
    those a resume may apply, and the others. "preset" is not compared: the values it set are. Nor are settings
    the earlier command could not name (added to captioner since; the stored config says what was built)."""
    changed = {
        key: (before.get(key), now.get(key))
        for key in sorted(set(before) | set(now))
        if key != "preset" and (key in before or key not in now) and before.get(key) != now.get(key)
    }
    allowed = {k: v for k, v in changed.items() if k in RESUMABLE or k.partition(".")[0] in RESUMABLE_SECTIONS}
    return allowed, {k: v for k, v in changed.items() if k not in allowed}


def with_settings(config: RunConfig, values: dict[str, Any]) -> RunConfig:
    """A copy of `config` with {"section.field": value} set (values already typed)."""
    sections = {name: dataclasses.replace(getattr(config, name)) for name in _SECTION_TYPES}
    for key, value in values.items():
        section, _, name = key.partition(".")
        setattr(sections[section], name, value)
    return dataclasses.replace(config, **sections)


def apply_overrides(config: RunConfig, overrides: dict[str, str]) -> RunConfig:
    """Set `section.field` values given as strings, converted to the field's declared type.

    Args:
        config: RunConfig. Changed in place and returned.
        overrides: dict[str, str]. e.g. {"train.epochs": "3", "model.encoder_weights": "none"}.
    """
    for key, raw in overrides.items():
        key = RENAMED.get(key, key)
        if key == "vqa.fine_tune_encoder":
            key = "model.encoder_trainable"
        section_name, _, field_name = key.partition(".")
        section = getattr(config, section_name, None)
        if section is None or not dataclasses.is_dataclass(section) or not field_name:
            raise ValueError(f"unknown setting '{key}'; use section.field with section in {sorted(_SECTION_TYPES)}")
        hints = typing.get_type_hints(type(section))
        if field_name not in hints:
            raise ValueError(f"unknown setting '{key}'")
        setattr(section, field_name, _convert(raw, hints[field_name], key))
    return config


def _convert(raw: Any, hint: Any, key: str) -> Any:
    if not isinstance(raw, str):
        return raw
    args = typing.get_args(hint)
    if type(None) in args:  # Optional[X]
        if raw.lower() in ("none", "null", ""):
            return None
        hint = next(a for a in args if a is not type(None))
    origin = typing.get_origin(hint)
    try:
        if hint is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if origin is list:
            (item,) = typing.get_args(hint)
            return [item(part) for part in raw.split(",") if part]
        return hint(raw)
    except (TypeError, ValueError):
        raise ValueError(f"setting '{key}' expects {getattr(hint, '__name__', hint)}, got '{raw}'") from None
