"""Training: one fit loop for every task (captioner.tasks: records -> vocabulary -> tf.data -> model) -> a run
directory.

Adam with global-norm clipping, validation loss every epoch, the best epoch kept as model.keras (written
atomically), early stopping, and history/metrics written as JSON after every epoch.
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
from keras import ops

from captioner import scst
from captioner.config import (
    DERIVED,
    RESUMABLE,
    RunConfig,
    flatten,
    resume_changes,
    upgraded_flat,
    with_settings,
)
from captioner.data import Skipped
from captioner.data.preprocessing import PipelineFailure, pipeline_error
from captioner.distribute import Parallel, ParallelConfig
from captioner.errors import CaptionerError
from captioner.fileio import atomic_path, directory_lock, is_disk_full, remove_stale_temporaries, write_json
from captioner.resolve import MONITORS, Machine, resolve, source_run
from captioner.run import (
    ANSWERS_FILE,
    CONFIG_FILE,
    HISTORY_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    MODEL_FILE,
    REQUEST_FILE,
    VOCAB_FILE,
    Run,
    load_config,
    read_json,
    save_config,
    save_model,
    start_run,
    update_metrics,
    write_manifest,
)
from captioner.tasks import get_task
from captioner.viz import history_figure

BACKUP_DIR = "backup"  # keras.callbacks.BackupAndRestore state (weights, optimizer, epoch); kept when training ends


class FinalBackup(keras.callbacks.BackupAndRestore):
    """BackupAndRestore whose files are written atomically (a kill or a full disk leaves the previous backup
    whole), and which also saves the state training ends with, and keeps it: a finished run can be trained
    further (a larger `--epochs`) from exactly where it stopped."""

    # steps of the current epoch done (Keras's "batch" cannot tell "none" from "the first"); read back on a resume
    steps_done = 0

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.steps_done = int(read_json(Path(self._training_metadata_path), {}).get("steps_done", 0))

    def on_train_batch_end(self, batch, logs=None):
        self.steps_done = batch + 1
        super().on_train_batch_end(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self.steps_done = 0
        super().on_epoch_end(epoch, logs)

    def _save_model(self):
        weights, metadata = Path(self._weights_path), Path(self._training_metadata_path)
        if self.double_checkpoint:
            for latest, previous in ((weights, self._prev_weights_path), (metadata, self._prev_training_metadata_path)):
                if latest.exists():
                    with atomic_path(previous) as tmp:
                        shutil.copyfile(latest, tmp)
        with atomic_path(weights, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp, overwrite=True)
        write_json(
            metadata, {"epoch": self._current_epoch, "batch": self._last_batch_seen, "steps_done": self.steps_done}
        )

    def on_train_end(self, logs=None):
        self._save_model()
        super().on_train_end(logs)


def best_epoch(values: list[float], mode: str) -> int:
    """The epoch (0-based) of the best value; the first of equal ones."""
    better = min if mode == "min" else max
    return better(range(len(values)), key=values.__getitem__)


class BestCheckpoint(keras.callbacks.Callback):
    """Save the model atomically whenever the monitored value improves ("min": val_loss, "max": val_accuracy)."""

    def __init__(self, path: Path, monitor: str = "val_loss", mode: str = "min"):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.mode = mode
        self.best = float("inf") if mode == "min" else -float("inf")
        self.best_epoch = -1
        self.start_is_best = False  # SCST: the starting weights are saved and no epoch has beaten them yet

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is not None and (value < self.best if self.mode == "min" else value > self.best):
            self.best, self.best_epoch, self.start_is_best = float(value), epoch, False
            save_model(self.model, self.path)


class RunLog(keras.callbacks.Callback):
    """history.json after every epoch, and training throughput (the first epoch, which traces and fills
    the image cache, is reported separately)."""

    def __init__(self, path: Path, images_per_epoch: int, items_per_epoch: int, item_name: str):
        super().__init__()
        self.path = path
        self.images_per_epoch = images_per_epoch
        self.items_per_epoch = items_per_epoch  # captions or questions
        self.item_name = item_name
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
        # The rate this epoch trained with (a plateau schedule may lower it after this callback has run).
        self.history.setdefault("learning_rate", []).append(
            float(ops.convert_to_numpy(self.model.optimizer.learning_rate))
        )
        self.history.setdefault("train_seconds", []).append(self.train_seconds[-1] if self.train_seconds else 0.0)
        write_json(self.path, self.history)

    def throughput(self) -> dict[str, float]:
        steady = self.train_seconds[1:] or self.train_seconds
        seconds = sum(steady) / max(len(steady), 1)
        return {
            "first_epoch_seconds": self.train_seconds[0] if self.train_seconds else 0.0,
            "steady_epoch_seconds": seconds,
            "images_per_second": self.images_per_epoch / seconds if seconds else 0.0,
            f"{self.item_name}_per_second": self.items_per_epoch / seconds if seconds else 0.0,
        }


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose best value and patience count survive a resume."""

    resume_best: float | None = None
    resume_wait: int = 0

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resume_best is not None:
            self.best, self.wait = self.resume_best, self.resume_wait


def _restore_progress(
    run_dir: Path, log: RunLog, checkpoint: BestCheckpoint, early_stopping: ResumableEarlyStopping
) -> None:
    """Cut history back to the epochs the backup holds and restore the best-so-far and patience from it."""
    metadata = read_json(run_dir / BACKUP_DIR / "training_metadata.json", {})
    epochs_done = int(metadata.get("epoch", 0))
    history = read_json(run_dir / HISTORY_FILE, {})
    log.history = {key: values[:epochs_done] for key, values in history.items()}
    log.train_seconds = list(log.history.get("train_seconds", []))
    values = log.history.get(checkpoint.monitor, [])
    if values:
        best = best_epoch(values, checkpoint.mode)
        checkpoint.best, checkpoint.best_epoch = values[best], best
        early_stopping.resume_best, early_stopping.resume_wait = values[best], len(values) - 1 - best


def _clear_run(run_dir: Path) -> None:
    """--restart: remove what an earlier run wrote (only the files a run writes)."""
    for name in (
        MODEL_FILE,
        VOCAB_FILE,
        ANSWERS_FILE,
        CONFIG_FILE,
        HISTORY_FILE,
        METRICS_FILE,
        MANIFEST_FILE,
        REQUEST_FILE,
        "history.png",
    ):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / BACKUP_DIR, ignore_errors=True)


def _as_requested(config: RunConfig) -> dict[str, Any]:
    """The settings a command asks for, flattened, with its paths made absolute (the same folder named from
    another working directory is the same request)."""
    flat = flatten(config)
    for key in (
        "data.data_dir",
        "data.feature_cache_dir",
        "vqa.encoder_from",
        "model.encoder_weights",
        "train.init_from",
    ):
        value = flat.get(key)
        if value and (key != "model.encoder_weights" or Path(value).is_file()):
            flat[key] = str(Path(value).resolve())
    return flat


def _describe(key: str, before: Any, now: Any) -> str:
    if key == "train.epochs":
        return f"{'extending' if now > before else 'shortening'} from {before} to {now} epochs"
    return f"{key} {before} -> {now}"


def _resumed_config(run_dir: Path, requested: RunConfig, finished: dict | None) -> tuple[RunConfig, list[str]]:
    """The stored config with the resumable settings of `requested` applied, and a phrase per change.

    Any other difference is a CaptionerError naming the settings: the run directory and the command must agree.
    """
    stored = load_config(run_dir)
    asked = read_json(run_dir / REQUEST_FILE)
    if asked is not None:
        asked = upgraded_flat(asked)  # written before a setting was renamed
    if asked is None:  # a run started before request.json was written: compare with what it stored
        asked = {k: v for k, v in _as_requested(stored).items() if k not in DERIVED}
        now = {k: v for k, v in _as_requested(requested).items() if k not in DERIVED}
    else:
        now = _as_requested(requested)
    allowed, refused = resume_changes(asked, now)
    if refused:
        shown = ", ".join(f"{key} ({before} -> {after})" for key, (before, after) in list(refused.items())[:4])
        more = f" and {len(refused) - 4} more" if len(refused) > 4 else ""
        raise CaptionerError(
            f"{run_dir} was started with other settings: {shown}{more}; repeat the command that started it, "
            f"pass --restart to train it again from scratch, or choose a new --run "
            f"(a resume may change only {', '.join(RESUMABLE)} and decode.*)"
        )
    config = with_settings(stored, {key: after for key, (_, after) in allowed.items()})
    changes = [_describe(key, before, after) for key, (before, after) in allowed.items()]
    if finished is not None and changes:
        ran = finished["train"]["epochs_run"]
        if ran < stored.train.epochs and "train.patience" not in allowed:  # early stopping ended it
            changes.append(
                f"it stopped early after {ran} epochs, so it stops again after one more epoch "
                f"unless train.patience grows too (now {stored.train.patience})"
            )
    return config, changes


def train(
    config: RunConfig,
    run_dir: str | Path,
    verbose: int | str = "auto",
    restart: bool = False,
    skipped: Skipped | None = None,
    notify: Callable[[str], None] = lambda line: None,
    log: Callable[[str], None] = lambda line: None,
    parallel: Parallel | None = None,
) -> dict[str, Any]:
    """Train a captioner or a VQA model (`config.task`) as `config` says and write the run directory.

    An existing run directory is resumed (weights, optimizer state, epoch, best-so-far and patience, from its
    backup) when `config` asks for what it was started with; `epochs`, `patience`, `backup_every_steps`, the
    feature cache folder and the decode settings may differ, and are applied (a finished run trained further
    when they ask for more). Any other difference is an error. A finished run asked for nothing new is left as is
    and its metrics are returned with "already_finished": True.

    Args:
        config: RunConfig. Data, model, training and decoding settings, as the command asks for them.
        run_dir: str. Output folder; created if missing.
        verbose: Keras `fit` verbosity ("auto", 0, 1 or 2).
        restart: bool. Discard what the run directory holds and start over.
        skipped: Skipped. Collects the dataset entries the loaders could not use (metrics.json gets the summary).
        notify: called with one line for each thing the caller should tell the user (settings a resume applies).
        log: called with one line of information for the training log (what "auto" precision became, and why).
        parallel: the started data parallelism (`distribute.start`); None: one device. `train.batch_size` is the
            global batch. Process 0 writes `run_dir`; any other process trains in a private copy of it (taken at the
            start, so a resume restores process 0's backup everywhere), says nothing and removes the copy at the end.

    Returns:
        The contents of metrics.json (the private copy's, in a process other than 0).
    """
    run_dir = Path(run_dir)
    parallel = parallel or Parallel(ParallelConfig())
    # before anything is read or written, the lock included: every value checked, every "auto" written out
    resolved = resolve(config, Machine.of(parallel))
    parallel.check_batch(config.train.batch_size)
    source = source_run(resolved, run_dir) if config.train.init_from else None
    with contextlib.ExitStack() as scope:
        if not parallel.writer:
            run_dir = _private_copy(run_dir, parallel.config.process_id, scope)
            verbose, notify, log = 0, (lambda line: None), (lambda line: None)
        # Process 0 changes nothing in the run directory (its first act: removing the temporaries a killed job left)
        # until every other process has its copy: a file gone mid-copy once failed a resume after Ctrl-C.
        parallel.barrier("run directory copied")
        scope.enter_context(directory_lock(run_dir))  # one writer per run directory
        scope.enter_context(parallel.scope())  # the model is built, compiled and fitted on every device
        return _train(config, resolved, source, run_dir, verbose, restart, skipped, notify, log, scope, parallel)


def _private_copy(run_dir: Path, process_id: int, scope: contextlib.ExitStack) -> Path:
    """A process other than 0 trains in a temporary copy of `run_dir` as it is now (its backup, history and
    vocabulary: what a resume reads), removed when training ends; the run directory itself is process 0's alone."""
    private = (
        Path(scope.enter_context(tempfile.TemporaryDirectory(prefix=f"captioner-process{process_id}-"))) / run_dir.name
    )
    if (
        run_dir.is_dir()
    ):  # less the lock and what a killed writer left half-written (`fileio.atomic_path`, `atomic_directory`)
        shutil.copytree(run_dir, private, ignore=shutil.ignore_patterns(".lock", "*.lock", ".*.tmp*", ".*.old"))
    return private


def _train(
    requested: RunConfig,
    resolved: RunConfig,
    source: Run | None,
    run_dir: Path,
    verbose: int | str,
    restart: bool,
    skipped: Skipped | None,
    notify: Callable[[str], None],
    log: Callable[[str], None],
    scope: contextlib.ExitStack,
    parallel: Parallel,
) -> dict[str, Any]:
    config = resolved  # a resumed run takes its stored settings instead, with the changes a resume may make
    previous = read_json(run_dir / METRICS_FILE, {}) if (run_dir / CONFIG_FILE).exists() else None
    if (
        run_dir.is_dir()
    ):  # temporaries left by a kill during an atomic write; the lock makes this process the only writer
        remove_stale_temporaries(run_dir)
        remove_stale_temporaries(run_dir / BACKUP_DIR)
    if restart:
        _clear_run(run_dir)
    resuming = previous is not None and not restart
    epochs_done = (
        int(read_json(run_dir / BACKUP_DIR / "training_metadata.json", {}).get("epoch", -1)) if resuming else -2
    )
    parallel.same_everywhere("run directory", epochs_done)  # several hosts: one run directory, or no common start
    if resuming:
        finished = previous if previous.get("status") == "finished" else None
        config, changes = _resumed_config(run_dir, requested, finished)
        if finished is not None and not changes:
            return {**previous, "already_finished": True}
        if finished is not None and not (run_dir / BACKUP_DIR / "training_metadata.json").exists():
            raise CaptionerError(
                f"{run_dir} was finished without keeping its last training state (an older captioner); "
                f"pass --restart to train it again from scratch, or choose a new --run"
            )
        if changes:
            notify(f"resuming {run_dir}: " + "; ".join(changes))
            save_config(config, run_dir, _as_requested(requested))
        if finished is not None:
            update_metrics(run_dir, {"status": "training"})
    task = get_task(config.task)
    monitor, mode = config.train.monitor, MONITORS[config.train.monitor]
    if not resuming:  # config.json says what each "auto" became, and why
        log(
            f"precision {config.model.precision}"
            + (f" ({config.model.precision_reason})" if config.model.precision_reason else "")
        )
    keras.utils.set_random_seed(config.train.seed)
    skipped = skipped if skipped is not None else Skipped()
    shard = parallel.shard()
    setup = task.setup(config, run_dir, resuming, verbose, skipped, source.model if source is not None else None, shard)
    if not resuming:
        start_run(run_dir, setup.config, _as_requested(requested), setup.vocab, setup.answers)
    train_cfg, model = setup.config.train, setup.model
    if source is not None:
        setup.stats["init_from"] = str(Path(train_cfg.init_from).resolve())
    if (
        parallel.replicas > 1
    ):  # whole batches only: the rows of a last partial batch sit out each epoch (a new draw each time)
        setup.stats["data_parallel"] = {
            **parallel.describe(),
            "train_rows_left_out_per_epoch": setup.train_images % train_cfg.batch_size,
        }
    model.compile(
        optimizer=keras.optimizers.Adam(train_cfg.learning_rate, global_clipnorm=train_cfg.clip_norm),
        loss=setup.loss,
        metrics=setup.metrics,
    )
    checkpoint = BestCheckpoint(run_dir / MODEL_FILE, monitor, mode)
    log = RunLog(run_dir / HISTORY_FILE, setup.train_images, setup.train_items, task.item_name)
    early_stopping = ResumableEarlyStopping(monitor=monitor, mode=mode, patience=train_cfg.patience)
    if train_cfg.objective == "scst":  # its own loop, with its own backup of the same files
        backup = scst.StepBackup(run_dir / BACKUP_DIR, train_cfg.backup_every_steps)
    else:
        backup = FinalBackup(
            run_dir / BACKUP_DIR,
            save_freq=train_cfg.backup_every_steps,
            double_checkpoint=True,
            delete_checkpoint=False,
        )
    if resuming:
        _restore_progress(run_dir, log, checkpoint, early_stopping)
    # The log writes history.json before the backup records the epoch as done, so a kill in between leaves an
    # extra history entry, which the next resume cuts off; never a missing one.
    # orders the epoch
    clock = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: setattr(shard.clock, "epoch", epoch))
    callbacks = [clock, log, checkpoint, early_stopping]
    if train_cfg.objective != "scst":  # SCST's loop saves its own backup
        callbacks.insert(2, backup)
    if train_cfg.lr_reduce_factor < 1.0:  # the rate itself is an optimizer variable, so a resume restores it
        callbacks.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor,
                mode=mode,
                factor=train_cfg.lr_reduce_factor,
                patience=train_cfg.lr_reduce_patience,
                verbose=1,
            )
        )
    started = time.perf_counter()
    try:
        if train_cfg.objective == "scst":
            setup.stats.update(scst.fit(setup, callbacks, log, backup, checkpoint, early_stopping, verbose))
        else:
            model.fit(
                setup.train_data,
                validation_data=setup.val_data,
                epochs=train_cfg.epochs,
                callbacks=callbacks,
                verbose=verbose,
                shuffle=False,
            )
    except PipelineFailure as exc:  # raised inside tf.data (every image of a split unreadable, ...): one line
        raise pipeline_error(exc) from None
    except CaptionerError:
        raise
    except Exception as exc:
        if is_disk_full(exc):  # a write Keras makes itself; ours say which file (fileio.atomic_path)
            raise CaptionerError(
                f"no space left on device while training into {run_dir}; the last backup is kept; "
                f"free some space and run the same command again"
            ) from None
        raise
    elapsed = time.perf_counter() - started
    if (
        checkpoint.best_epoch < 0 and not checkpoint.start_is_best
    ):  # validation loss was never finite: keep the last weights all the same
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
                "monitor": monitor,
                f"best_{monitor}": checkpoint.best,
                **setup.stats,
                # after training: images the pipeline could not decode are known only once read
                "skipped": skipped.summary(task.skipped_item),
                "optimizer_iterations": int(model.optimizer.iterations.numpy()),
                "seconds": elapsed,
                **log.throughput(),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            },
        },
    )
