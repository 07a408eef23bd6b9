#!/usr/bin/env python
"""Equal quality under mixed precision: the same recipe trained once per precision, side by side, scored the same.

For each precision, from the same seed: the `shapes` preset's model (Show-and-Tell, or Show-Attend-Tell with
`--decoder attention`) trained with the preset's optimiser, batch size, epochs, patience and learning-rate
schedule, the weights of the best validation loss kept; then test-split BLEU-4 with greedy and the preset's
beam. With `--vqa`, the `easy-vqa` preset likewise, scored by test accuracy. Also printed: ms per training step
(median of each epoch's mean, compilation excluded) and the best validation loss.

The batches come from numpy arrays (`captioner.data.arrays`, Keras's own array adapter) instead of `tf.data`, so
the script runs where TensorFlow is not installed (the lent GPU machine has JAX only): the same records,
vocabulary, padding, model, loss and optimiser as `captioner train`, a different shuffling stream. It is a
comparison between precisions under one recipe, not a reproduction of a `captioner train` run's numbers.

    KERAS_BACKEND=jax python scripts/precision_quality.py --data-dir /tmp/shapes --precisions float32,mixed_bfloat16
    [--vqa]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import keras
import numpy as np

from captioner.config import DecodeConfig, preset
from captioner.data import load_qa_split, load_split
from captioner.data.arrays import caption_arrays, group_questions, padded_caption_length, question_arrays
from captioner.data.images import load_image
from captioner.data.shapes import generate
from captioner.data.vocab import AnswerVocabulary, Vocabulary, tokenize
from captioner.evaluation.metrics import bleu_scores, vqa_accuracy
from captioner.generation.answering import Answerer
from captioner.generation.decoding import CaptionGenerator
from captioner.models.networks import build_caption_model, build_vqa_model
from captioner.resolve import resolve


class EpochTimer(keras.callbacks.Callback):
    """Mean seconds per training step of every epoch (the first epoch's includes compilation)."""

    def __init__(self):
        super().__init__()
        self.step_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.started, self.steps = time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    def on_test_begin(self, logs=None):  # validation runs inside the epoch: stop the clock there
        if self.steps:
            self.step_seconds.append((time.perf_counter() - self.started) / self.steps)


def fit(model, config, train: tuple, val: tuple, verbose: int) -> dict:
    """Train as `captioner train` does (Adam with global-norm clipping, early stopping on validation loss, the
    preset's learning-rate schedule), keeping the best epoch's weights."""
    train_cfg = config.train
    model.compile(
        optimizer=keras.optimizers.Adam(train_cfg.learning_rate, global_clipnorm=train_cfg.clip_norm),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=0),
    )
    timer = EpochTimer()
    callbacks = [
        timer,
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=train_cfg.patience, restore_best_weights=True),
    ]
    if train_cfg.lr_reduce_factor < 1.0:
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=train_cfg.lr_reduce_factor, patience=train_cfg.lr_reduce_patience
            )
        )
    started = time.perf_counter()
    history = model.fit(
        *train,
        validation_data=val,
        batch_size=train_cfg.batch_size,
        epochs=train_cfg.epochs,
        callbacks=callbacks,
        shuffle=True,
        verbose=verbose,
    )
    losses = history.history["val_loss"]
    return {
        "epochs": len(losses),
        "best_val_loss": float(min(losses)),
        "best_epoch": int(np.argmin(losses)) + 1,
        "ms_per_step": 1000 * statistics.median(timer.step_seconds[1:] or timer.step_seconds),
        "train_seconds": time.perf_counter() - started,
    }


def caption_quality(
    data_dir: str, precisions: list[str], decoder: str, epochs: int | None, limit: int | None, verbose: int
) -> list[dict]:
    config = preset("shapes")
    config.model.decoder = decoder
    if epochs:
        config.train.epochs = epochs
    config = resolve(config)
    splits = {name: load_split("shapes", data_dir, name)[:limit] for name in ("train", "val", "test")}
    vocab = Vocabulary.build((c for r in splits["train"] for c in r.captions), min_count=config.data.min_word_count)
    max_length = padded_caption_length(
        splits["train"], config.data.max_caption_length, config.data.max_length_percentile
    )
    size = config.data.image_size
    images = {
        name: np.stack([load_image(r.image, size) for r in records]) for name, records in splits.items()
    }  # (n, size, size, 3)
    arrays = {
        name: caption_arrays(splits[name], vocab, config.data.captions_per_image, max_length)
        for name in ("train", "val")
    }
    references = [[tokenize(c) for c in r.captions] for r in splits["test"]]
    rows = []
    for precision in precisions:
        keras.utils.set_random_seed(config.train.seed)
        model = build_caption_model(config.model, len(vocab), size, precision)
        row = {
            "task": f"shapes {decoder}",
            "precision": precision,
            **fit(
                model,
                config,
                ({"images": images["train"], "tokens": arrays["train"][0]}, arrays["train"][1]),
                ({"images": images["val"], "tokens": arrays["val"][0]}, arrays["val"][1]),
                verbose,
            ),
        }
        for beam in sorted({1, config.decode.beam_size}):
            generator = CaptionGenerator(
                model,
                vocab,
                DecodeConfig(
                    max_length=config.decode.max_length, beam_size=beam, length_penalty=config.decode.length_penalty
                ),
            )
            captions = [
                c
                for start in range(0, len(images["test"]), 256)
                for c in generator(images["test"][start : start + 256]).captions
            ]
            row[f"bleu4_beam{beam}"] = bleu_scores(references, [tokenize(c) for c in captions])["bleu4"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def vqa_quality(precisions: list[str], epochs: int | None, limit: int | None, verbose: int) -> list[dict]:
    config = resolve(preset("easy-vqa"))
    if epochs:
        config.train.epochs = epochs
    vqa = config.vqa
    splits = {name: load_qa_split("easy-vqa", "", name)[: limit and limit * 10] for name in ("train", "val", "test")}
    vocab = Vocabulary.build((r.question for r in splits["train"]), min_count=config.data.min_word_count)
    answers = AnswerVocabulary.build((r.answer for r in splits["train"]), max_size=vqa.num_answers)
    max_length = min(vqa.max_question_length, max(len(tokenize(r.question)) for r in splits["train"]))
    size = config.data.image_size
    groups = {name: group_questions(records, vqa.questions_per_image) for name, records in splits.items()}
    images = {
        name: np.stack([load_image(image, size) for image, _ in g]) for name, g in groups.items()
    }  # (groups, size, size, 3)
    arrays = {
        name: question_arrays(g, vocab, answers, vqa.questions_per_image, max_length) for name, g in groups.items()
    }
    rows = []
    for precision in precisions:
        keras.utils.set_random_seed(config.train.seed)
        model = build_vqa_model(config, len(vocab), len(answers), size, precision=precision)
        row = {
            "task": "easy-vqa",
            "precision": precision,
            **fit(
                model,
                config,
                ({"images": images["train"], "questions": arrays["train"][0]}, arrays["train"][1]),
                ({"images": images["val"], "questions": arrays["val"][0]}, arrays["val"][1]),
                verbose,
            ),
        }
        answerer = Answerer(model, vocab, answers, max_length)
        scores = []
        for start in range(0, len(groups["test"]), 256):
            probabilities, _ = answerer(images["test"][start : start + 256], arrays["test"][0][start : start + 256])
            for (_, records), distributions in zip(groups["test"][start : start + 256], probabilities):
                scores += [
                    vqa_accuracy(answers.answers[int(np.argmax(d))], r.answers) for r, d in zip(records, distributions)
                ]
        row["test_accuracy"] = float(np.mean(scores))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/shapes", help="the shapes dataset (generated there when missing)")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument("--decoders", default="lstm", help="comma-separated: lstm, attention")
    parser.add_argument("--epochs", type=int, default=None, help="instead of the preset's")
    parser.add_argument("--vqa", action="store_true", help="also easy-VQA (the easy-vqa package)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many images a split (a quick check)")
    parser.add_argument("--out", default=None, help="write every row as JSON here")
    parser.add_argument("--verbose", type=int, default=2)
    args = parser.parse_args()
    if not (Path(args.data_dir) / "test.json").exists():
        generate(args.data_dir, workers=os.cpu_count())
    print(f"backend {keras.backend.backend()}", flush=True)
    precisions = args.precisions.split(",")
    rows = []
    for decoder in args.decoders.split(","):
        rows += caption_quality(args.data_dir, precisions, decoder, args.epochs, args.limit, args.verbose)
    if args.vqa:
        rows += vqa_quality(precisions, args.epochs, args.limit, args.verbose)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
