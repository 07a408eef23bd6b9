"""Training: records -> vocabulary -> tf.data -> CaptionModel.fit -> a run directory.

Adam with global-norm clipping, validation loss every epoch, the best epoch kept as model.keras (written
atomically), early stopping, and history/metrics written as JSON after every epoch.
"""

from __future__ import annotations

import resource
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras

from captioner.config import RunConfig
from captioner.datasets import CaptionRecord, load_split
from captioner.encoder import default_image_size
from captioner.errors import CaptionerError
from captioner.fileio import remove_stale_temporaries, write_json
from captioner.models import build_caption_model
from captioner.preprocessing import caption_dataset
from captioner.run import (
    CONFIG_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    VOCAB_FILE,
    load_config,
    read_json,
    save_config,
    save_model,
    update_metrics,
    write_manifest,
)
from captioner.viz import history_figure
from captioner.vocab import Vocabulary, tokenize

BACKUP_DIR = "backup"  # keras.callbacks.BackupAndRestore state (weights, optimizer, epoch); removed when training ends


class BestCheckpoint(keras.callbacks.Callback):
    """Save the model atomically whenever validation loss improves."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self.best = float("inf")
        self.best_epoch = -1

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_loss")
        if value is not None and value < self.best:
            self.best, self.best_epoch = float(value), epoch
            save_model(self.model, self.path)


class RunLog(keras.callbacks.Callback):
    """history.json after every epoch, and training throughput (the first epoch, which traces and fills
    the image cache, is reported separately)."""

    def __init__(self, path: Path, images_per_epoch: int, captions_per_image: int):
        super().__init__()
        self.path = path
        self.images_per_epoch = images_per_epoch
        self.captions_per_image = captions_per_image
        self.history: dict[str, list[float]] = {}
        self.train_seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_test_begin(self, logs=None):
        if hasattr(self, "_start"):
            self.train_seconds.append(time.perf_counter() - self._start)
            del self._start

    def on_epoch_end(self, epoch, logs=None):
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(float(value))
        self.history.setdefault("train_seconds", []).append(self.train_seconds[-1] if self.train_seconds else 0.0)
        write_json(self.path, self.history)

    def throughput(self) -> dict[str, float]:
        steady = self.train_seconds[1:] or self.train_seconds
        seconds = sum(steady) / max(len(steady), 1)
        images = self.images_per_epoch / seconds if seconds else 0.0
        return {
            "first_epoch_seconds": self.train_seconds[0] if self.train_seconds else 0.0,
            "steady_epoch_seconds": seconds,
            "images_per_second": images,
            "captions_per_second": images * self.captions_per_image,
        }


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose best value and patience count survive a resume."""

    resume_best: float | None = None
    resume_wait: int = 0

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resume_best is not None:
            self.best, self.wait = self.resume_best, self.resume_wait


def _restore_progress(run_dir: Path, log: RunLog, checkpoint: BestCheckpoint, early_stopping: ResumableEarlyStopping) -> None:
    """Cut history back to the epochs the backup holds and restore the best-so-far and patience from it."""
    metadata = read_json(run_dir / BACKUP_DIR / "training_metadata.json", {})
    epochs_done = int(metadata.get("epoch", 0))
    history = read_json(run_dir / HISTORY_FILE, {})
    log.history = {key: values[:epochs_done] for key, values in history.items()}
    log.train_seconds = list(log.history.get("train_seconds", []))
    val_losses = log.history.get("val_loss", [])
    if val_losses:
        best_epoch = min(range(len(val_losses)), key=val_losses.__getitem__)
        checkpoint.best, checkpoint.best_epoch = val_losses[best_epoch], best_epoch
        early_stopping.resume_best, early_stopping.resume_wait = val_losses[best_epoch], len(val_losses) - 1 - best_epoch


def _clear_run(run_dir: Path) -> None:
    """--restart: remove what an earlier run wrote (only the files a run writes)."""
    for name in (MODEL_FILE, VOCAB_FILE, CONFIG_FILE, HISTORY_FILE, METRICS_FILE, MANIFEST_FILE, "history.png"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / BACKUP_DIR, ignore_errors=True)


def _check_images(records: list[CaptionRecord], split: str) -> None:
    missing = [r.image for r in records if not Path(r.image).is_file()]
    if missing:
        raise CaptionerError(f"{len(missing)} image file(s) of the {split} split are missing (first: {missing[0]})")


def train(config: RunConfig, run_dir: str | Path, verbose: int | str = "auto", restart: bool = False) -> dict[str, Any]:
    """Train a captioner as `config` says and write the run directory.

    An existing unfinished run directory is resumed (weights, optimizer state, epoch, best-so-far and
    patience, from its mid-epoch backup) with the settings it started with; a finished one is left as is
    and its metrics are returned with "already_finished": True.

    Args:
        config: RunConfig. Data, model, training and decoding settings (ignored when resuming).
        run_dir: str. Output folder; created if missing.
        verbose: Keras `fit` verbosity ("auto", 0, 1 or 2).
        restart: bool. Discard what the run directory holds and start over.

    Returns:
        The contents of metrics.json.
    """
    run_dir = Path(run_dir)
    previous = read_json(run_dir / METRICS_FILE, {}) if (run_dir / CONFIG_FILE).exists() else None
    if previous is not None and previous.get("status") == "finished" and not restart:
        return {**previous, "already_finished": True}
    if run_dir.is_dir():
        remove_stale_temporaries(run_dir)  # left by a kill during an atomic write; this process is the only writer
    if restart:
        _clear_run(run_dir)
    resuming = previous is not None and not restart
    if resuming:  # the same command again: continue with the settings and vocabulary the run started with
        config = load_config(run_dir)
        vocab = Vocabulary.load(run_dir / VOCAB_FILE)
    data, train_cfg = config.data, config.train
    keras.utils.set_random_seed(train_cfg.seed)
    train_records = load_split(data.dataset, data.data_dir, train_cfg.train_split)[: train_cfg.max_train_images]
    val_records = load_split(data.dataset, data.data_dir, train_cfg.val_split)[: train_cfg.max_val_images]
    _check_images(train_records, train_cfg.train_split)
    _check_images(val_records, train_cfg.val_split)

    image_size = default_image_size(config.model.encoder, data.image_size)
    if not resuming:
        vocab = Vocabulary.build((c for r in train_records for c in r.captions), min_count=data.min_word_count)
        # Pad to the longest training caption, not further: padded steps cost time (the attention loop unrolls them).
        longest = max(len(tokenize(c)) for r in train_records for c in r.captions)
        data = replace(data, image_size=image_size, data_dir=str(Path(data.data_dir).resolve()), max_caption_length=min(data.max_caption_length, longest))
        config = replace(config, data=data)
        run_dir.mkdir(parents=True, exist_ok=True)
        vocab.save(run_dir / VOCAB_FILE)
        save_config(config, run_dir)

    model = build_caption_model(config.model, len(vocab), image_size)
    model.compile(
        optimizer=keras.optimizers.Adam(train_cfg.learning_rate, global_clipnorm=train_cfg.clip_norm),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=vocab.pad_id),
    )

    def batches(records, shuffle):
        return caption_dataset(
            records, vocab, image_size, data.captions_per_image, data.max_caption_length,
            train_cfg.batch_size, shuffle=shuffle, seed=train_cfg.seed, cache=data.cache_images,
        )

    checkpoint = BestCheckpoint(run_dir / MODEL_FILE)
    log = RunLog(run_dir / HISTORY_FILE, len(train_records), data.captions_per_image)
    early_stopping = ResumableEarlyStopping(monitor="val_loss", patience=train_cfg.patience)
    backup = keras.callbacks.BackupAndRestore(run_dir / BACKUP_DIR, save_freq=train_cfg.backup_every_steps, double_checkpoint=True)
    if resuming:
        _restore_progress(run_dir, log, checkpoint, early_stopping)
    # The log writes history.json before the backup records the epoch as done, so a kill in between leaves an
    # extra history entry, which the next resume cuts off; never a missing one.
    callbacks = [log, backup, checkpoint, early_stopping]
    started = time.perf_counter()
    model.fit(batches(train_records, True), validation_data=batches(val_records, False), epochs=train_cfg.epochs, callbacks=callbacks, verbose=verbose, shuffle=False)
    elapsed = time.perf_counter() - started
    if checkpoint.best_epoch < 0:  # validation loss was never finite: keep the last weights all the same
        save_model(model, run_dir / MODEL_FILE)
    write_manifest(run_dir)
    history_figure(log.history, run_dir / "history.png")
    return update_metrics(
        run_dir,
        {
            "status": "finished",
            "train": {
                "epochs_run": len(log.train_seconds),
                "best_epoch": checkpoint.best_epoch + 1,
                "best_val_loss": checkpoint.best,
                "train_images": len(train_records),
                "val_images": len(val_records),
                "vocab_size": len(vocab),
                "optimizer_iterations": int(model.optimizer.iterations.numpy()),
                "seconds": elapsed,
                **log.throughput(),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            },
        },
    )
