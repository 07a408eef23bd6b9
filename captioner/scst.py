"""Self-critical sequence training (Rennie et al. 2017), all of it in one place: its defaults (`DEFAULTS`,
`started_from`), its checks (`check`), what a run reads (`setup`: images or cached features and references), the
loop (`fit`, with its own backup of weights, optimizer state and step: `StepBackup`), the loss
(`BannedCrossentropy`) and a step's samples, rewards and advantages (`SelfCritic`).

For a batch of images `SelfCritic.step_arrays` samples K captions per image with the model as it is now
(one compiled search, `RandomSampler` at temperature 1 with the same bans as decoding), scores them with
CIDEr-D against the image's references (`captioner.cider`, document frequencies from the training
references, `<end>` kept in both, as self-critical.pytorch does), subtracts a baseline (the greedy caption's
CIDEr-D, or the mean of the image's other samples, Luo 2020), and returns the samples as teacher-forcing inputs,
targets and per-token weights `advantage / tokens in the batch`. Cross-entropy summed with those weights is
-sum(advantage * log p(sample)): its gradient is the policy gradient, so `Model.train_on_batch` takes the step
on every backend. The log-probabilities are recomputed by the teacher-forced pass rather than kept from the
search; with dropout off (SCST runs set `model.dropout_rate` 0) both are the same policy.

`SelfCritic.greedy_cider` decodes a split greedily and scores it with CIDEr-D whose document frequencies come
from that split's references, which is pycocoevalcap's CIDEr: the number early stopping watches ("val_cider").
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from captioner import backend
from captioner.cider import CiderD, words_to_ids
from captioner.config import DecodeConfig, RunConfig, with_settings
from captioner.config import started_from as config_started_from
from captioner.data import Skipped
from captioner.data.images import read_image
from captioner.data.vocab import Vocabulary, tokenize
from captioner.errors import CaptionerError
from captioner.fileio import atomic_path, write_json
from captioner.generation.decoding import CaptionGenerator
from captioner.models.networks import CaptionModel, training_work
from captioner.run import read_json, save_model
from captioner.tasks import base
from captioner.tasks.base import Setup

# SCST's own defaults (Rennie et al. 2017; self-critical.pytorch): Adam at 5e-5 without decay, the best epoch by
# validation CIDEr. Dropout off: the captions sampled are then exactly the policy trained (keeping the source's 0.5
# measured no better on Flickr8k: BENCHMARKS.md, "Self-critical sequence training").
DEFAULTS = {
    "train.learning_rate": 5e-5,
    "train.lr_reduce_factor": 1.0,
    "train.monitor": "val_cider",
    "train.epochs": 10,
    "train.patience": 2,
    "model.dropout_rate": 0.0,
}


def started_from(source: RunConfig, init_from: str) -> RunConfig:
    """The settings of an SCST run that starts from the run `source` (`--init-from ... --objective scst`): the
    source's, then `DEFAULTS`. Command-line flags go on top."""
    return with_settings(config_started_from(source, init_from, "scst"), DEFAULTS)


def check(config: RunConfig) -> None:
    """SCST's own settings, before anything is read or written: each problem one line."""
    train_cfg = config.train
    if not train_cfg.init_from:
        raise CaptionerError(
            "--objective scst fine-tunes a trained captioner: add --init-from RUN (a finished cross-entropy run)"
        )
    if train_cfg.scst_samples < 1:
        raise CaptionerError(f"--scst-samples must be at least 1 (got {train_cfg.scst_samples})")
    if train_cfg.scst_baseline not in BASELINES:
        raise CaptionerError(f"unknown --scst-baseline '{train_cfg.scst_baseline}'; use greedy or mean")
    if train_cfg.scst_baseline == "mean" and train_cfg.scst_samples < 2:
        raise CaptionerError(
            "--scst-baseline mean compares each sample with the others: --scst-samples must be at least 2"
        )


BASELINES = ("greedy", "mean")


@keras.saving.register_keras_serializable(package="captioner")
class BannedCrossentropy(keras.losses.Loss):
    """Sparse cross-entropy over the words the sampler may draw: the banned ids' logits get -1e9 first.

    The policy gradient must be that of the distribution the captions were sampled from. The sampler never draws
    `<pad>`, `<start>` or `<unk>`; with their logits left in, the gradient of every token's log-probability also
    pushes those never-sampled logits by advantage x probability, a push with a sign (the mean advantage's) that no
    sample ever corrects. With the greedy baseline, whose advantages are mostly negative, it raised `<unk>` at every
    step and wrecked the captions within an epoch (BENCHMARKS.md, "Self-critical sequence training").

    Args:
        banned: token ids never sampled.
        vocab_size: int.
    """

    def __init__(
        self,
        banned: Sequence[int] = (),
        vocab_size: int = 1,
        reduction: str = "sum",
        name: str = "banned_crossentropy",
        **kwargs,
    ):
        super().__init__(reduction=reduction, name=name, **kwargs)
        self.banned, self.vocab_size = [int(i) for i in banned], int(vocab_size)
        mask = np.zeros(self.vocab_size, np.float32)
        mask[self.banned] = -1e9
        self._mask = mask

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32") + ops.convert_to_tensor(self._mask)  # (..., vocab)
        return ops.sparse_categorical_crossentropy(y_true, logits, from_logits=True)

    def get_config(self):
        return {**super().get_config(), "banned": self.banned, "vocab_size": self.vocab_size}


@dataclass
class CaptionSource:
    """The images of one split as a self-critical step reads them.

    inputs: indices -> the model's image input for those images: {"features": (n, positions, channels)} from a
        feature cache, or {"images": (n, size, size, 3) uint8}.
    references: per image, its reference captions as token ids (no `<start>`, no `<end>`).
    """

    inputs: Callable[[np.ndarray], dict[str, np.ndarray]]
    references: list[list[list[int]]]
    input_spec: tuple[str, tuple, str]  # (key, shape of one image's input, dtype)

    def __len__(self) -> int:
        return len(self.references)


def reference_ids(captions: Sequence[Sequence[str]], vocab: Vocabulary) -> list[list[list[int]]]:
    """Per image, its captions as token ids: a vocabulary word has its vocabulary id, any other word an id of its own
    above the vocabulary (never generated, but counted as the word it is, as pycocoevalcap counts it)."""
    index = {word: i for i, word in enumerate(vocab.words)}
    ids, _ = words_to_ids(([tokenize(caption) for caption in group] for group in captions), index)
    return ids


def _until_end(rows: np.ndarray, end_id: int, keep_end: bool) -> list[np.ndarray]:
    """Each row's tokens up to its `<end>` (kept or not); a row that never ends is kept whole."""
    out = []
    for row in rows:
        ends = np.flatnonzero(row == end_id)
        stop = int(ends[0]) + (1 if keep_end else 0) if len(ends) else len(row)
        out.append(row[:stop])
    return out


class SelfCritic:
    """Samples, rewards and advantages of self-critical training for one CaptionModel.

    Args:
        model: CaptionModel. Trained in place by the caller.
        vocab: Vocabulary.
        train: CaptionSource. The training images and references (the document frequencies come from them).
        samples: int. Captions sampled per image (>= 1; >= 2 with the "mean" baseline).
        baseline: "greedy" or "mean".
        max_length: int. Tokens generated at most, `<end>` included.
        seed: int. The sampling noise of step s of epoch e comes from (seed, e, s): a resumed epoch repeats its draws.
    """

    def __init__(
        self,
        model: CaptionModel,
        vocab: Vocabulary,
        train: CaptionSource,
        samples: int = 5,
        baseline: str = "greedy",
        max_length: int = 26,
        seed: int = 0,
    ):
        if baseline not in BASELINES:
            raise ValueError(f"unknown SCST baseline '{baseline}'; use greedy or mean")
        if samples < 1 or (baseline == "mean" and samples < 2):
            raise ValueError("SCST needs at least 1 sample per image (2 with the mean baseline)")
        self.model, self.vocab, self.train = model, vocab, train
        self.samples, self.baseline, self.max_length, self.seed = int(samples), baseline, int(max_length), int(seed)
        with_end = [[[*caption, vocab.end_id] for caption in group] for group in train.references]
        self.cider = CiderD(with_end)  # rewards: training references with <end>, document frequencies from them
        self._split_scorers: dict[int, CiderD] = {}  # greedy_cider's, per split scored (pycocoevalcap's CIDEr)
        self.sampler = CaptionGenerator(
            model,
            vocab,
            DecodeConfig(
                sampler="sampling",
                num_captions=self.samples,
                max_length=self.max_length,
                beam_size=1,
                length_penalty=0.0,
            ),
        )
        self.greedy = CaptionGenerator(
            model, vocab, DecodeConfig(sampler="greedy", beam_size=1, max_length=self.max_length)
        )
        key, shape, dtype = train.input_spec
        self.input_key = key
        noise_spec = ((None, self.samples, self.max_length), "float32")
        self._sample = backend.CompiledFunction(self._search, model.variables, [((None, *shape), dtype), noise_spec])
        self._decode = backend.CompiledFunction(self._greedy, model.variables, [((None, *shape), dtype)])

    def _encode(self, inputs):
        if self.input_key == "features":
            return self.model.encoder.from_cached(inputs)  # (batch, num_pixels, encoder_dim), (batch, pooled_dim)
        return self.model.encode(inputs)

    def _search(self, inputs, noise):
        grid, pooled = self._encode(inputs)
        *_, rows, _ = self.sampler.search_encoded(grid, pooled, noise)  # rows (batch, samples, max_length)
        if self.baseline != "greedy":
            return rows, rows[:, 0]
        greedy, *_ = self.greedy.search_encoded(grid, pooled)  # (batch, max_length)
        return rows, greedy

    def _greedy(self, inputs):
        grid, pooled = self._encode(inputs)
        tokens, *_ = self.greedy.search_encoded(grid, pooled)  # (batch, max_length)
        return (tokens,)

    def noise(self, batch: int, epoch: int, step: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, step]).random(
            (batch, self.samples, self.max_length), dtype=np.float32
        )

    def step_arrays(
        self, indices: np.ndarray, epoch: int, step: int
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, dict[str, float]]:
        """For training images `indices`: (inputs, targets, sample_weight, stats) of one policy-gradient step.

        inputs: {input key, "tokens": (batch, samples, max_length) `<start>` + each sample}; targets: (batch, samples,
        max_length) each sample then padding; sample_weight: (batch, samples, max_length) the advantage on every token
        of a sample up to its `<end>`, over the tokens of the batch; stats: mean reward, baseline, sample length.
        """
        inputs = self.train.inputs(indices)
        image_input = inputs[self.input_key]
        # (batch, samples, L), (batch, L)
        rows, greedy = self._sample(image_input, self.noise(len(indices), epoch, step))
        batch = len(indices)
        flat = rows.reshape(batch * self.samples, self.max_length)
        images = np.repeat(indices, self.samples)
        scoring = time.perf_counter()
        samples = _until_end(flat, self.vocab.end_id, keep_end=True)  # each sample up to and with its <end>
        rewards = self.cider(samples, images).reshape(batch, self.samples)
        if self.baseline == "greedy":
            baseline = np.repeat(
                self.cider(_until_end(greedy, self.vocab.end_id, keep_end=True), indices)[:, None], self.samples, axis=1
            )
        else:  # the mean reward of the image's other samples
            baseline = (rewards.sum(axis=1, keepdims=True) - rewards) / (self.samples - 1)
        scoring = time.perf_counter() - scoring
        advantage = rewards - baseline  # (batch, samples)
        lengths = np.array([len(r) for r in samples]).reshape(batch, self.samples)
        # (batch, samples, L): the sampled tokens
        mask = np.arange(self.max_length)[None, None, :] < lengths[:, :, None]
        weights = (advantage[:, :, None] * mask / max(int(mask.sum()), 1)).astype(np.float32)
        targets = np.where(mask, rows, self.vocab.pad_id).astype(np.int32)
        tokens = np.concatenate(
            [np.full((batch, self.samples, 1), self.vocab.start_id, np.int32), targets[:, :, :-1]], axis=2
        )
        stats = {
            "reward": float(rewards.mean()),
            "baseline": float(baseline.mean()),
            "sample_words": float((lengths - 1).mean()),
            "scoring_seconds": scoring,
        }
        return {self.input_key: image_input, "tokens": tokens}, targets, weights, stats

    def greedy_captions(self, source: CaptionSource, batch_size: int = 128) -> list[np.ndarray]:
        """Greedy token ids (up to, without, `<end>`) of every image of `source`."""
        out: list[np.ndarray] = []
        for start in range(0, len(source), batch_size):
            indices = np.arange(start, min(start + batch_size, len(source)))
            (tokens,) = self._decode(source.inputs(indices)[self.input_key])
            out.extend(_until_end(tokens, self.vocab.end_id, keep_end=False))
        return out

    def greedy_cider(self, source: CaptionSource, batch_size: int = 128) -> float:
        """pycocoevalcap's CIDEr (document frequencies from `source`'s references) of greedy captions of `source`."""
        captions = self.greedy_captions(source, batch_size)
        if id(source) not in self._split_scorers:  # its document frequencies: computed once per split, not per epoch
            self._split_scorers[id(source)] = CiderD(source.references)
        return float(self._split_scorers[id(source)](captions, np.arange(len(source))).mean())


def setup(
    config: RunConfig,
    model,
    vocab: Vocabulary,
    train_records,
    val_records,
    verbose,
    skipped: Skipped,
    stats: dict[str, Any],
) -> Setup:
    """Self-critical training reads images (or their cached features) and references, not teacher-forcing batches:
    the captions it learns from are sampled at every step (`SelfCritic`)."""
    train_cfg = config.train
    if training_work(config) == "train_cached":
        cache, train_records, val_records = base.cached_train_val(
            config, model.encoder, train_records, val_records, verbose, skipped, stats
        )

        def source(records) -> CaptionSource:
            features = cache.rows([r.image for r in records])  # (images, positions, channels), read per batch
            return CaptionSource(
                lambda indices: {"features": features[indices]},
                reference_ids([r.captions for r in records], vocab),
                ("features", model.encoder.cached_shape, np.dtype(features.dtype).name),
            )
    else:
        size = model.encoder.image_size

        def source(records) -> CaptionSource:
            def images(indices):
                return {
                    "images": np.stack([_image_or_blank(records[i].image, size, skipped) for i in indices])
                }  # (n, size, size, 3)

            return CaptionSource(
                images, reference_ids([r.captions for r in records], vocab), ("images", (size, size, 3), "uint8")
            )

    return Setup(
        config=config,
        model=model,
        # The advantages are the weights; they already divide by the tokens of the batch. The words the sampler
        # never draws are out of the softmax, as they were when sampling.
        loss=BannedCrossentropy([vocab.pad_id, vocab.start_id, vocab.unk_id], len(vocab)),
        metrics=[],
        train_data=source(train_records),
        val_data=source(val_records),
        train_images=len(train_records),
        train_items=len(train_records) * train_cfg.scst_samples,
        stats={"train_images": len(train_records), "val_images": len(val_records), **stats},
        vocab=vocab,
    )


def _image_or_blank(path: str, size: int, skipped: Skipped) -> np.ndarray:
    """The image as (size, size, 3) uint8, or a blank one for a file that cannot be decoded (counted as skipped)."""
    try:
        return read_image(path, size)[0]
    except CaptionerError as exc:
        skipped.unreadable(path, str(exc))
        return np.zeros((size, size, 3), np.uint8)


class StepBackup:
    """SCST's backup, in the run's `backup/` folder: the weights and the optimizer's state (`Model.save_weights`)
    and the step reached, written atomically every `every` steps and at each epoch's end, the previous pair kept
    beside (a damaged latest falls back to it). The same files `keras.callbacks.BackupAndRestore` writes for a
    cross-entropy run, and the same meaning ("epoch": epochs done; "steps_done": steps of the next one done), so
    `train` cuts history back the same way; read and written here, not through Keras's private state."""

    WEIGHTS, STATE = "latest.weights.h5", "training_metadata.json"  # BackupAndRestore's names

    def __init__(self, folder: Path, every: int):
        self.folder, self.every = Path(folder), max(int(every), 1)

    def _pairs(self) -> list[tuple[Path, Path]]:
        latest = (self.folder / self.WEIGHTS, self.folder / self.STATE)
        return [latest, (self.folder / "previous.weights.h5", self.folder / "previous_metadata.json")]

    def restore(self, model: keras.Model) -> tuple[int, int]:
        """(epoch, step) to continue at: the weights and optimizer state of the latest whole backup loaded, or
        (0, 0) with none."""
        for weights, state in self._pairs():
            values = read_json(state, None)
            if values is None or not weights.exists():
                continue
            try:
                model.load_weights(weights)
            except (OSError, ValueError):
                continue
            return int(values.get("epoch", 0)), int(values.get("steps_done", 0))
        return 0, 0

    def save(self, model: keras.Model, epoch: int, steps_done: int) -> None:
        """`epoch` epochs done and `steps_done` steps of the next; the previous backup becomes previous.*."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (weights, state), (prev_weights, prev_state) = self._pairs()
        for latest, previous in ((weights, prev_weights), (state, prev_state)):
            if latest.exists():
                with atomic_path(previous) as tmp:
                    shutil.copyfile(latest, tmp)
        with atomic_path(weights, suffix=".weights.h5") as tmp:
            model.save_weights(tmp, overwrite=True)
        write_json(state, {"epoch": epoch, "batch": steps_done - 1, "steps_done": steps_done})


def fit(
    setup: Setup,
    callbacks: list,
    log,
    backup: StepBackup,
    checkpoint,
    early_stopping,
    verbose: int | str,
) -> dict[str, Any]:
    """`Model.fit`'s epoch loop for self-critical training, driving the same callbacks (backup and resume, best
    checkpoint, early stopping, history, progress bar): each step samples with the weights as they are
    (`train_on_batch` leaves them in the model's variables on every backend, so the sampler never lags), and each
    epoch ends with the greedy CIDEr of the validation split ("val_cider"). A resume continues at the step after
    the backup (`fit` restarts the epoch): the order and the noise of a step depend on (seed, epoch, step) only, so
    a resumed run takes the steps an uninterrupted one takes. The starting weights count as epoch 0: model.keras is
    never worse on validation than the run it started from, and patience counts from them."""
    config, model = setup.config, setup.model
    train_cfg = config.train
    critic = SelfCritic(
        model,
        setup.vocab,
        setup.train_data,
        train_cfg.scst_samples,
        train_cfg.scst_baseline,
        config.decode.max_length,
        train_cfg.seed,
    )
    images = len(setup.train_data)
    steps = -(-images // train_cfg.batch_size)
    hooks = keras.callbacks.CallbackList(
        callbacks,
        add_progbar=verbose != 0,
        verbose=1 if verbose == "auto" else verbose,
        epochs=train_cfg.epochs,
        steps=steps,
        model=model,
    )
    start_cider = critic.greedy_cider(setup.val_data)  # the source's weights: a resume restores its backup after this
    if start_cider > checkpoint.best:  # a new run, or a resumed one whose epochs have not beaten the start
        save_model(model, checkpoint.path)
        checkpoint.best, checkpoint.best_epoch, checkpoint.start_is_best = start_cider, -1, True
        early_stopping.resume_best, early_stopping.resume_wait = start_cider, len(log.history.get("val_cider", []))
    model.stop_training = False
    model.optimizer.build(model.trainable_variables)  # its state exists before a backup is loaded into it
    first_epoch, first_step = backup.restore(model)
    hooks.on_train_begin()
    scoring = 0.0
    for epoch in range(first_epoch, train_cfg.epochs):
        hooks.on_epoch_begin(epoch)
        order = np.random.default_rng([train_cfg.seed, epoch]).permutation(images)
        sums: dict[str, float] = {}
        for step in range(first_step, steps):
            hooks.on_train_batch_begin(step)
            # sequential cache reads
            indices = np.sort(order[step * train_cfg.batch_size : (step + 1) * train_cfg.batch_size])
            inputs, targets, weights, stats = critic.step_arrays(indices, epoch, step)
            scoring += stats.pop("scoring_seconds")
            logs = model.train_on_batch(inputs, targets, sample_weight=weights, return_dict=True)
            for key, value in {**logs, **stats}.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            hooks.on_train_batch_end(step, {key: value / (step + 1 - first_step) for key, value in sums.items()})
            if (step + 1) % backup.every == 0 and step + 1 < steps:
                backup.save(model, epoch, step + 1)
            if model.stop_training:
                break
        log.on_test_begin()  # the epoch's training time ends here
        epoch_logs = {
            key: value / max(steps - first_step, 1) for key, value in sums.items()
        }  # a resumed epoch: its steps since
        first_step = 0
        epoch_logs["val_cider"] = critic.greedy_cider(setup.val_data)
        hooks.on_epoch_end(epoch, epoch_logs)  # history first, then the best model: a kill between repeats the epoch
        backup.save(model, epoch + 1, 0)
        if model.stop_training:
            break
    hooks.on_train_end()
    return {"start_val_cider": start_cider, "scst_scoring_seconds": scoring}
