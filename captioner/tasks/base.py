"""What every task gives the shared training loop and the CLI (`Task`), and what they share.

A task (captioning, VQA, ...) owns its vocabularies, its records -> `tf.data` step, its model builder, loss
and metrics (`setup`), its generation (`CaptionTask.generator`, `VQATask.answerer`) and its evaluation
(`evaluate`, `summary_lines`). `captioner.train` is one fit loop over `Setup`; the CLI picks a task by the
name a run's config.json stores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from captioner.config import RunConfig
from captioner.datasets import Skipped
from captioner.errors import CaptionerError
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


@dataclass
class EvalOptions:
    """How to score a run on a split (the `evaluate` command's flags)."""

    split: str = "test"
    data_dir: str | None = None
    batch_size: int = 256
    out: str | None = None
    max_images: int | None = None
    beam_size: int | None = None  # None: the run's decode.beam_size
    length_penalty: float | None = None
    meteor: bool = False


class Task:
    """One kind of run. Subclasses set the class attributes and implement the methods."""

    name = ""  # config.task
    item_name = ""  # what is counted per image in training: "captions", "questions"
    skipped_item = "entries"  # what a skipped dataset entry is called in the evaluation report

    def setup(self, config: RunConfig, run_dir: Path, resuming: bool, verbose: int | str, skipped: Skipped) -> Setup:
        """Load the splits, build (or, resuming, load) the vocabularies, write them with config.json into
        `run_dir`, and return the model, loss, metrics and datasets to fit."""
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
        raise CaptionerError(f"none of the {len(records)} images of the {split} split can be read (first: {first_problem})")
    return kept
