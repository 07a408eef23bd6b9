"""What every task gives the shared training loop and the CLI (`Task`), and what they share.

A task (captioning, VQA, ...) owns its vocabularies, its records -> `tf.data` step, its model builder, loss
and metrics (`setup`), its generation (`CaptionTask.generator`, `VQATask.answerer`) and its evaluation
(`evaluate`, `summary_lines`). `captioner.train` is one fit loop over `Setup`; the CLI picks a task by the
name a run's config.json stores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import keras

from captioner.config import DataConfig, DecodeConfig, RunConfig
from captioner.data import Skipped, load_sources, mix, sources
from captioner.distribute import InputShard, share
from captioner.errors import CaptionerError
from captioner.models.features import FeatureCache
from captioner.models.networks import build_image_encoder
from captioner.precision import resolve_precision
from captioner.run import Run


@dataclass
class Setup:
    """What a task hands the shared training loop."""

    config: RunConfig  # with what the data decided (vocabulary-derived lengths, image size) written in
    model: keras.Model
    loss: keras.losses.Loss
    metrics: list
    train_data: Any  # tf.data.Dataset
    val_data: Any
    train_images: int  # image encodings per epoch
    train_items: int  # captions or questions per epoch
    stats: dict[str, Any]  # task-specific lines for metrics.json
    vocab: Any = None  # the Vocabulary of the captions or questions (self-critical training decodes with it)
    answers: Any = None  # VQA runs: the AnswerVocabulary


@dataclass
class EvalOptions:
    """How to score a run on a split (the `evaluate` command's flags)."""

    split: str = "test"
    data_dir: str | None = None
    batch_size: int = 256
    out: str | None = None
    max_images: int | None = None
    decode: DecodeConfig | None = None  # caption runs: how to generate (None: the run's decode settings)
    meteor: bool = False
    # the loader of data_dir (default: the run's source of that folder, else its first source's)
    dataset: str | None = None
    black_images: bool = False  # VQA runs: also answer with every image black (what the image is worth)


class Task:
    """One kind of run. Subclasses set the class attributes and implement the methods."""

    name = ""  # config.task
    item_name = ""  # what is counted per image in training: "captions", "questions"
    skipped_item = "entries"  # what a skipped dataset entry is called in the evaluation report

    def setup(
        self,
        config: RunConfig,
        run_dir: Path,
        resuming: bool,
        verbose: int | str,
        skipped: Skipped,
        source: keras.Model | None = None,
        shard: InputShard = InputShard(),
    ) -> Setup:
        """Load the splits, build (or, resuming, load) the vocabularies, write them with config.json into
        `run_dir`, and return the model, loss, metrics and datasets to fit. `source`: the model of the run the new
        one starts from (`train.init_from`), whose weights the new model takes before any feature is cached (a frozen
        backbone's features are its weights' features; a resume then restores its own backup over them). `shard`:
        this process's rows of each global batch (data-parallel training over several processes)."""
        raise NotImplementedError

    def evaluate(self, run: Run, options: EvalOptions, skipped: Skipped) -> dict[str, Any]:
        """Score `run` on a split: metrics.json's evaluation entry, also returned."""
        raise NotImplementedError

    def summary_lines(self, result: dict[str, Any]) -> list[str]:
        """`evaluate`'s result as the lines the CLI prints."""
        raise NotImplementedError


def on_disk(records: list, split: str, skipped: Skipped) -> list:
    """The records whose image file can be opened; the others are skipped and counted (missing, or in a folder
    this user may not read), and a split left with none is an error."""
    kept, first_problem = [], ""
    for record in records:
        try:
            os.stat(record.image)
            kept.append(record)
        except (FileNotFoundError, NotADirectoryError):
            skipped.add("image not on disk", record.image)
            first_problem = first_problem or f"{record.image}: no such file"
        except OSError as exc:
            skipped.add("unreadable image", f"{record.image}: {exc.strerror}")
            first_problem = first_problem or f"{record.image}: {exc.strerror}"
    if not kept:
        raise CaptionerError(
            f"none of the {len(records)} images of the {split} split can be read (first: {first_problem})"
        )
    return kept


def source_records(
    load: Callable[..., list], data: DataConfig, split: str, limit: Callable[[list], list], skipped: Skipped, **options
) -> list[list]:
    """Each source's usable records of `split` (`data.dataset` in `data.data_dir`, then `data.more_sources`): read by
    `load` (`load_split`, `load_qa_split`), cut by `limit`, kept where the image is on disk. An error names its
    source."""

    def usable(dataset: str, folder: str, split: str, skipped: Skipped, **options) -> list:
        return on_disk(limit(load(dataset, folder, split, skipped, **options)), split, skipped)

    return load_sources(usable, sources(data.dataset, data.data_dir, data.more_sources), split, skipped, **options)


def mixed(parts: list[list], config: RunConfig, validation: bool = False) -> list:
    """The records trained on (`data.source_weights`' shares), or validated on: with several sources, their dev
    splits in equal shares, so the validation loss that picks the best epoch is the mean over the sources'."""
    if validation:
        return mix(parts, [1.0] * len(parts) if len(parts) > 1 else [], config.train.seed)
    return mix(parts, config.data.source_weights, config.train.seed)


def source_stats(
    data: DataConfig, train_parts: list[list], train_records: list, val_parts: list[list]
) -> list[dict[str, Any]]:
    """metrics.json's line per source: its records, and how many the mixed training list holds (the weights' doing)."""
    pairs = sources(data.dataset, data.data_dir, data.more_sources)
    used: dict[int, int] = {}
    for record in train_records:
        used[id(record)] = used.get(id(record), 0) + 1
    return [
        {
            "dataset": name,
            "data_dir": folder,
            "train_records": len(train),
            "train_records_mixed": sum(used.get(id(r), 0) for r in train),
            "val_records": len(val),
        }
        for (name, folder), train, val in zip(pairs, train_parts, val_parts)
    ]


def scored_source(data: DataConfig, dataset: str | None, data_dir: str | None) -> tuple[str, str]:
    """The (dataset, folder) `evaluate` scores: as given; a dataset alone names the run's source of that dataset, a
    folder alone takes the loader of the run's source in it (else the first source's); neither is the first source."""
    pairs = sources(data.dataset, data.data_dir, data.more_sources)
    if dataset and data_dir:
        return dataset, data_dir
    if dataset:
        folders = [folder for name, folder in pairs if name == dataset]
        if not folders:
            raise CaptionerError(
                f"the run was trained on {', '.join(name for name, _ in pairs)}, not {dataset}: "
                f"give the folder of its {dataset} copy with --data-dir"
            )
        return dataset, folders[0]
    if data_dir:
        names = [name for name, folder in pairs if Path(folder).resolve() == Path(data_dir).resolve()]
        return (names[0] if names else data.dataset), data_dir
    return pairs[0]


def resolved_folders(data: DataConfig) -> DataConfig:
    """`data` with every source's folder absolute (what config.json stores: a run is evaluated from anywhere)."""
    more = [
        f"{name}={Path(folder).resolve()}"
        for name, folder in sources(data.dataset, data.data_dir, data.more_sources)[1:]
    ]
    return replace(data, data_dir=str(Path(data.data_dir).resolve()) if data.data_dir else "", more_sources=more)


def cache_encoder(encoder, config: RunConfig):
    """The frozen backbone that fills the feature cache: the model's own, or, where the run trains at another
    precision than `data.feature_precision`, a copy at that precision (the features `captioner features` makes)."""
    precision = resolve_precision(config.data.feature_precision, "features")
    if encoder.cnn.compute_dtype == keras.dtype_policies.get(precision).compute_dtype:
        return encoder
    copy = build_image_encoder(config.model, encoder.image_size, precision=precision)
    copy.cnn.set_weights(encoder.cnn.get_weights())
    return copy


def filled_cache(
    config: RunConfig,
    encoder,
    splits: dict[str, list],
    verbose: int | str,
    skipped: Skipped,
    shard: InputShard = InputShard(),
) -> tuple[FeatureCache, dict[str, list], int]:
    """The feature cache of a frozen backbone with every image of `splits` ({split name: records}) in it: the CNN
    runs once per image not cached yet. Returns the cache, the records whose image could be read, and how many
    images were computed; a split left with none is an error. With several processes each first computes its
    share (as `features --shard I/N`) and waits for the others; then each fills what its cache still lacks (nothing,
    where the hosts share the cache folder)."""
    data = config.data
    cache = FeatureCache(
        data.feature_cache_dir or str(Path(data.data_dir) / "features"), cache_encoder(encoder, config)
    )
    unreadable: set[str] = set()

    def unusable(path: str, message: str) -> None:
        unreadable.add(path)
        skipped.unreadable(path, message)

    paths = [r.image for records in splits.values() for r in records]
    computed = 0
    if shard.count > 1:
        computed = cache.extract(share(paths, shard.index, shard.count), verbose=_progress(verbose), on_error=unusable)
        shard.barrier("feature cache filled")
    computed += cache.extract(paths, verbose=_progress(verbose), on_error=unusable)
    kept = {split: [r for r in records if r.image not in unreadable] for split, records in splits.items()}
    for split, records in kept.items():
        if not records:
            raise CaptionerError(
                f"none of the images of the {split} split could be read ({skipped.summary('entries')})"
            )
    return cache, kept, computed


def cached_train_val(
    config: RunConfig,
    encoder,
    train_records: list,
    val_records: list,
    verbose: int | str,
    skipped: Skipped,
    stats: dict[str, Any],
    shard: InputShard = InputShard(),
) -> tuple[FeatureCache, list, list]:
    """`filled_cache` for a training's two splits: the cache, the train and val records whose image could be read;
    `stats` gets the cache's folder and how many images were computed."""
    train_split, val_split = config.train.train_split, config.train.val_split
    cache, kept, computed = filled_cache(
        config, encoder, {train_split: train_records, val_split: val_records}, verbose, skipped, shard
    )
    stats.update(feature_cache=str(cache.folder), features_computed=computed)
    return cache, kept[train_split], kept[val_split]


def _progress(verbose: int | str) -> int:
    """Keras's verbosity for a progress bar: 0 none, 1 a bar redrawn in place, 2 a line when done ("auto": 1)."""
    return 1 if verbose == "auto" else int(verbose)
